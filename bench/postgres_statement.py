"""Benchmark the CPU one PostgreSQL statement costs the API process, by the way it is run.

Runs ``SELECT $1::int`` one at a time, ``--n`` times per way, in ABAB rounds so that drift on a
noisy machine hits every way alike, and prints the median CPU (``time.process_time``: this
process's user+system time, which includes the socket calls) per statement:

- ``asyncpg alone``: one asyncpg connection held for the whole run: the floor;
- ``PostgresDatabase.fetch``: what the hot path does (a connection from SQLAlchemy's pool, the
  statement on its driver, the connection back), with the server's statement timeout (asyncpg's
  ``command_timeout``: a timer per statement), and ``... no timeout`` without it;
- ``SQLAlchemy text()``: ``AsyncConnection.execute(text(...))`` in autocommit, what every other
  statement does.

    .venv/bin/python bench/postgres_statement.py [--url postgresql://...] [--n 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
import sqlalchemy

from taskplatform.backends.postgres import PostgresDatabase

Way = Callable[[], Awaitable[object]]


async def cpu_per_call(way: Way, n: int) -> float:
    """Return the CPU seconds per call of ``n`` sequential calls of ``way`` (after a warm-up)."""
    for _ in range(n // 10):
        await way()
    started = time.process_time()
    for _ in range(n):
        await way()
    return (time.process_time() - started) / n


async def main(url: str, n: int, rounds: int) -> None:
    database = PostgresDatabase(url)
    untimed = PostgresDatabase(url, statement_timeout_seconds=None)
    driver = await asyncpg.connect(url)
    autocommit = database.engine.execution_options(isolation_level="AUTOCOMMIT")
    statement = sqlalchemy.text("SELECT CAST(:n AS integer)")

    async def alchemy() -> object:
        async with autocommit.connect() as connection:
            return (await connection.execute(statement, {"n": 1})).all()

    ways: dict[str, Way] = {
        "asyncpg alone": lambda: driver.fetch("SELECT $1::int", 1),
        "PostgresDatabase.fetch": lambda: database.fetch("SELECT CAST(:n AS integer)", {"n": 1}),
        "PostgresDatabase.fetch, no timeout": lambda: untimed.fetch(
            "SELECT CAST(:n AS integer)", {"n": 1}
        ),
        "SQLAlchemy text()": alchemy,
    }
    results: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(rounds):
            for name, way in ways.items():
                results[name].append(await cpu_per_call(way, n))
    finally:
        await driver.close()
        await database.close()
        await untimed.close()
    floor = statistics.median(results["asyncpg alone"])
    print(f"### CPU per statement, median of {rounds} rounds of {n}\n")
    print("| way | µs CPU | ratio to asyncpg alone |\n| --- | ---: | ---: |")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e6:,.0f} | {median / floor:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.n, args.rounds))

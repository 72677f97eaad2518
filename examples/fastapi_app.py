"""A FastAPI service on ``AsyncCacheReader``: reads through the cache, writes to MySQL, and reads its own writes.

    CDC_SYNC_CONFIG=cdc-sync.toml APP_DATABASE_URL=mysql://app:pw@127.0.0.1:3306/shop \\
        uvicorn examples.fastapi_app:app          # (uvicorn is not part of the extra)

``GET /users/{id}`` serves the row from the cache (MySQL on a miss, filled for the next reader);
``PUT /users/{id}`` renames a user in MySQL, then returns the row as the cache has it once the worker applied
that write (``reader.after(gtid)``), and the write's GTID, which a client may pass back as ``?after=`` to read its
own write through any instance of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from cdc_sync import AsyncCacheReader, last_gtid

TABLE = os.environ.get("APP_USERS_TABLE", "shop.users")
if not re.fullmatch(r"\w+\.\w+", TABLE):
    raise SystemExit(f"APP_USERS_TABLE: must be schema.table, got {TABLE!r}")
SCHEMA, NAME = TABLE.split(".")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.reader = AsyncCacheReader.from_config()  # $CDC_SYNC_CONFIG: the worker's TOML
    try:
        yield
    finally:
        await app.state.reader.close()


app = FastAPI(lifespan=lifespan)


class Rename(BaseModel):
    name: str


def _connect() -> pymysql.Connection[Any]:
    url = urlsplit(os.environ["APP_DATABASE_URL"])
    return pymysql.connect(
        host=url.hostname or "127.0.0.1",
        port=url.port or 3306,
        user=unquote(url.username or "root"),
        password=unquote(url.password or ""),
        database=url.path.lstrip("/") or None,
    )


def _rename(user_id: int, name: str) -> str | None:
    """The write, as the application does it; the GTID of its commit, or None when there is no such user."""
    conn = _connect()
    try:
        with conn.cursor() as cur:
            sql = f"UPDATE `{SCHEMA}`.`{NAME}` SET name = %s WHERE id = %s"  # noqa: S608 - (checked identifiers)
            cur.execute(sql, (name, user_id))
            found = cur.rowcount == 1
        conn.commit()
        return last_gtid(conn) if found else None
    finally:
        conn.close()


@app.get("/users/{user_id}")
async def get_user(user_id: int, after: str | None = None) -> dict[str, Any]:
    reader: AsyncCacheReader = app.state.reader
    with reader.after(after):
        row = await reader.get_row(TABLE, id=user_id)
    if row is None:
        raise HTTPException(status_code=404, detail="no such user")
    return row


@app.put("/users/{user_id}")
async def rename_user(user_id: int, body: Rename) -> dict[str, Any]:
    gtid = await asyncio.to_thread(_rename, user_id, body.name)
    if gtid is None:
        raise HTTPException(status_code=404, detail="no such user")
    reader: AsyncCacheReader = app.state.reader
    with reader.after(gtid):
        row = await reader.get_row(TABLE, id=user_id)
    return {"user": row, "gtid": gtid}

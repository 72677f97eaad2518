"""A Flask app on ``CacheReader`` whose writes go through the SQLAlchemy ORM, while the cache follows the binlog:
no cache code on the write path at all, only ``reader.after`` to read the write back.

    CDC_SYNC_CONFIG=cdc-sync.toml APP_DATABASE_URL=mysql+pymysql://app:pw@127.0.0.1:3306/shop \\
        flask --app examples.flask_app:create_app run

``GET /users/<id>`` serves the row from the cache; ``POST /users/<id>/rename`` (JSON ``{"name": ...}``) changes
it through the ORM and returns the row as the cache has it once the worker applied the commit.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cdc_sync import CacheReader, last_gtid

TABLE = os.environ.get("APP_USERS_TABLE", "shop.users")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"  # (in the database of APP_DATABASE_URL: TABLE's table)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


def create_app(reader: CacheReader | None = None) -> Flask:
    app = Flask(__name__)
    cache = reader if reader is not None else CacheReader.from_config()  # $CDC_SYNC_CONFIG
    engine = create_engine(os.environ["APP_DATABASE_URL"], pool_pre_ping=True)
    app.extensions["cdc_sync_reader"] = cache

    @app.get("/users/<int:user_id>")
    def show(user_id: int) -> ResponseReturnValue:
        row = cache.get_row(TABLE, id=user_id)
        if row is None:
            abort(404)
        return jsonify(row)

    @app.post("/users/<int:user_id>/rename")
    def rename(user_id: int) -> ResponseReturnValue:
        body: Any = request.get_json(force=True)
        with engine.connect() as conn:
            with Session(bind=conn) as session:
                user = session.get(User, user_id)
                if user is None:
                    abort(404)
                user.name = str(body["name"])
                session.commit()
            gtid = last_gtid(conn.connection.dbapi_connection)  # (the connection that committed)
        with cache.after(gtid):
            row = cache.get_row(TABLE, id=user_id)
        return jsonify({"user": row, "gtid": gtid})

    return app

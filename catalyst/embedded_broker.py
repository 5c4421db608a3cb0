"""Embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned for several processes.

Used when no ``REDIS_URL`` is set, so the demo needs no servers. Compared with the stock
transport it polls ten times a second (a simulated clock runs fast) and opens SQLite with
WAL and a busy timeout so a worker, a beat and the CLI can share the file.
"""

from kombu.transport.sqlalchemy import Channel as _Channel
from kombu.transport.sqlalchemy import Transport as _Transport
from sqlalchemy import create_engine, event


class Channel(_Channel):
    def _engine_from_config(self):
        url = self.connection.client.hostname
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine


class Transport(_Transport):
    Channel = Channel
    polling_interval = 0.1

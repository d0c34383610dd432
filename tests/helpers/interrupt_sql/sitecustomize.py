"""Loaded by a test's child process (PYTHONPATH): exact moments of a database's creation,
counted in SQL statements sent to a file whose name contains $SWEEPLAB_TEST_SQL_FILE,
instead of guessed sleeps:

- SWEEPLAB_TEST_SIGINT_AT_STATEMENT=N: Ctrl-C (SIGINT to this process) at the N-th statement;
- SWEEPLAB_TEST_MARK_AT_STATEMENT=N + SWEEPLAB_TEST_MARK=<path>: touch <path> at the N-th, and
  from then on SWEEPLAB_TEST_STATEMENT_DELAY_S per statement (a creation still in progress
  while the test looks at it).

Only SQLAlchemy's public event API is used; sweeplab has no hook for it.
"""

import os
import signal
import time

SIGINT_AT = int(os.environ.get("SWEEPLAB_TEST_SIGINT_AT_STATEMENT", "0"))
MARK_AT = int(os.environ.get("SWEEPLAB_TEST_MARK_AT_STATEMENT", "0"))
FILE = os.environ.get("SWEEPLAB_TEST_SQL_FILE", "mlflow.db")

if SIGINT_AT or MARK_AT:
    import sqlalchemy
    from sqlalchemy import event

    seen = {"n": 0}

    @event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany):
        if FILE not in str(conn.engine.url):
            return
        seen["n"] += 1
        if seen["n"] == SIGINT_AT:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, to this process
        if seen["n"] == MARK_AT:
            open(os.environ["SWEEPLAB_TEST_MARK"], "w").close()
        if MARK_AT and seen["n"] >= MARK_AT:
            time.sleep(float(os.environ.get("SWEEPLAB_TEST_STATEMENT_DELAY_S", "0.005")))

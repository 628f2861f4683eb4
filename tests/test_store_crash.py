"""Crash safety: a writer process is SIGKILLed mid-stream; nothing it reported committed is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chargepoint.protocol.outbox import Outbox
from chargepoint.store import Store

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta, UTC
    from pathlib import Path
    from chargepoint.store import Store
    from chargepoint.protocol.outbox import Outbox

    store = Store.open(Path(sys.argv[1]))
    outbox = Outbox(store)
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    local = store.begin_transaction(1, "TAG", t0.isoformat(), 1000)
    outbox.enqueue("StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": 1000,
                   "timestamp": t0.isoformat()}, local, t0)
    print("start", local, flush=True)
    i = 0
    while True:
        i += 1
        ts = (t0 + timedelta(seconds=10 * i)).isoformat()
        wh = 1000 + 3 * i
        with store.batch("sample"):
            store.update_meter(local, wh, ts)
            outbox.enqueue("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": ts,
                           "sampledValue": [{"value": str(wh)}]}], "i": i}, local, t0 + timedelta(seconds=10 * i))
        print(i, flush=True)   # only after the commit returned
    """
)


@pytest.mark.parametrize("kill_after", [1, 37, 250])
def test_sigkill_mid_stream_loses_nothing_committed(tmp_path: Path, kill_after: int) -> None:
    state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    assert first[0] == "start", first
    local = int(first[1])
    last_reported = 0
    for line in proc.stdout:
        last_reported = int(line)
        if last_reported >= kill_after:
            break
    os.kill(proc.pid, signal.SIGKILL)  # the writer is still busy writing the next samples
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    store = Store.open(state)
    try:
        assert store.moved_aside is None
        outbox = Outbox(store)
        msgs = outbox.pending()
        assert msgs[0].action == "StartTransaction" and msgs[0].local_tx_id == local
        samples = [m.payload["i"] for m in msgs[1:]]
        # Everything reported as committed is there, contiguous and in order; at most the
        # commits after the last report (killed before printing) are additionally present.
        assert samples == list(range(1, len(samples) + 1))
        assert len(samples) >= last_reported
        assert [m.seq for m in msgs] == sorted(m.seq for m in msgs)
        [tx] = store.open_transactions()
        # The meter register and the queued sample were committed together.
        assert tx.last_meter_wh == 1000 + 3 * samples[-1]
        # The store still takes writes after the crash.
        outbox.enqueue("StopTransaction", {"meterStop": tx.last_meter_wh}, local)
        assert outbox.pending()[-1].action == "StopTransaction"
    finally:
        store.close()

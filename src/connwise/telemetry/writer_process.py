"""The writer for a real store: SQLite or PostgreSQL written by a child process, fed by a pipe.

Why a process: in the gateway, an in-thread writer cost the event loop far more than its own CPU.
The sqlite3 module releases the GIL around every row it steps, so a writer thread took the GIL
back hundreds of times per batch; each time the loop, busy or coming back from epoll, had to
wait for the writer and then for the OS to schedule it again (the convoy effect), which on a
loaded machine is milliseconds. `connection: close` traffic, one record per connection, lost a
third of its throughput to it. Here the store's per-row work (binding, SQLite's B-tree and WAL,
asyncpg's COPY) runs in another interpreter, and the gateway's side takes the GIL from the loop
about once per `flush_interval`, not once per row.

How records flow. `submit` (the data plane) turns the record into its row and appends it to the
bounded queue; once `batch_size` rows wait, the submitting thread itself serializes them (one C
call to `marshal`) and writes the frame to the pipe without blocking: no other thread is woken
per batch. Whatever the pipe does not take stays in an output buffer, and every queued, buffered
or sent-but-unanswered record counts against `capacity`: past it, records are dropped and
counted, as with the thread writer. The child writes each batch as the thread writer does
(`write_isolating`: a record the store refuses costs only itself) and answers it once it is
committed, with the records written, those refused and the error that lost the rest; the
answers are read, without blocking, when the next batch is shipped, and by the housekeeping
thread, which wakes every `flush_interval` to ship stragglers, run retention, and restart a dead
child. A retention pass is a series of requests of at most `retention.chunk` records each, the
next sent once the last is answered, after the batches queued meanwhile (the thread then wakes
every `_PRUNE_POLL`): no request keeps the child from answering for long.
`flush` and `close` wait for the answers; `close` then tells the child to close the store, and
reaps it. `close` keeps to its timeout: records not committed by then are counted in `failed`,
and a child still at work is killed.

A dead or hung child is not silent: the records it had not committed are counted in `failed`, the
reason (its exit code, or that it did not answer within `timeout` and was killed) goes to
`last_error` and the log, and the housekeeping thread starts a new child (`restarts`); records
queued meanwhile wait for it, within `capacity`. The child never outlives the parent: it stops
at end of input, whoever closes the pipe. It ignores SIGINT and SIGTERM, which reach the whole
process group, so that it is still there to commit what the parent's drain flushes into it.

The child is `python -m connwise.telemetry.writer_process`, started with `subprocess` rather than
`multiprocessing`, whose exit hooks terminate or join children at interpreter exit and would
fight that lifetime. Frames are an 8-byte little-endian length and a marshal (requests to the
child; pickle for the store's opener and for a request marshal cannot write) or a pickle
(answers); the child's stdout is moved to stderr before anything runs, so a stray print cannot
corrupt a frame.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from connwise.errors import StoreError
from connwise.telemetry.record import ConnRecord, Row, row_of
from connwise.telemetry.writer import BatchSink, RecordWriter, Retention, write_isolating

log = logging.getLogger("connwise.telemetry")

_HEADER = struct.Struct("<Q")
_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Requests to the child go as marshal (version 4: repeated strings written once), a fifth
#: cheaper than pickle for batches of rows of plain values, on the data plane's side.
_MARSHAL = 4
_PICKLE_PROTO = b"\x80"
#: Largest frame either side accepts; a batch of 10,000 records is ~1.5 MB.
MAX_FRAME = 1 << 30
#: Pipe buffer asked for (Linux's default limit for unprivileged processes): a few batches fit,
#: so a write rarely comes back short.
PIPE_BYTES = 1 << 20
#: What `close` waits past its timeout for the thread to kill and reap a child that was late.
_REAP_GRACE = 1.0
#: How often the housekeeping thread looks for a retention step's answer during a pass.
_PRUNE_POLL = 0.02


class ProcessWriter(RecordWriter):
    """`RecordWriter` whose store is written by a child process; see the module docstring.

    `open_sink` must be picklable (a module-level function, or a bound method of a picklable
    object such as `StoreSpec.open_sink`): the child unpickles and calls it. `timeout` bounds
    every wait on the child; one that does not answer within it is killed and replaced.
    """

    def __init__(self, open_sink: Callable[[], BatchSink], *, capacity: int = 10_000,
                 batch_size: int = 500, flush_interval: float = 1.0,
                 retention: Retention | None = None, name: str = "store",
                 timeout: float = 60.0) -> None:
        super().__init__(open_sink, capacity=capacity, batch_size=batch_size,
                         flush_interval=flush_interval, retention=retention, name=name)
        self.timeout = timeout
        #: Children started after the first one died or hung.
        self.restarts = 0
        self._payload = pickle.dumps(open_sink, protocol=_PROTOCOL)
        #: The queue, as rows: a record becomes a tuple of plain values as it is submitted,
        #: which the garbage collector stops tracking, so that a queue of records waiting for
        #: their batch does not get promoted into the old generation and make full
        #: collections of the whole gateway heap more frequent.
        self._rows: deque[Row] = deque()
        #: Held by whoever ships or reads answers; the data plane only ever tries it.
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = bytearray()  # frames the pipe has not taken yet
        self._in = bytearray()  # answer bytes not parsed yet
        #: Answers awaited, oldest first: (request, records it carries).
        self._awaited: deque[tuple[str, int]] = deque()
        #: Records shipped (buffered or sent) that the child has not answered for yet.
        self._in_flight = 0
        self._answered_at = 0.0
        #: When `close` must be done by (monotonic): the shutdown's deadline.
        self._close_by = float("inf")
        #: The retention pass in progress, as its steps' arguments (max_age, max_bytes, now,
        #: limit); the records it deleted so far; whether its next step is due.
        self._pruning: tuple[float | None, int | None, float, int] | None = None
        self._pruned = 0
        self._prune_next = False

    @property
    def pid(self) -> int | None:
        """The child's process id (None while there is none)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    # -- data plane side -----------------------------------------------------------------------

    def submit(self, record: ConnRecord) -> bool:
        """Queue `record`; False if the queue was full and it was dropped. Never waits."""
        rows = self._rows
        if self._closing or len(rows) + self._in_flight >= self.capacity:
            self.dropped += 1
            return False
        rows.append(row_of(record))
        self.submitted += 1
        if len(rows) >= self.batch_size and self._lock.acquire(blocking=False):
            try:
                self._ship()
            finally:
                self._lock.release()
        return True

    __call__ = submit

    @property
    def depth(self) -> int:
        """Records queued or on their way to the child."""
        return len(self._rows) + self._in_flight

    # -- life ----------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ProcessWriter:
        """Start the child and open the store (raises what opening raised), then the thread."""
        with self._lock:
            self._spawn(timeout)
        self._opened.set()
        self._thread.start()
        return self

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record submitted so far is committed (or refused, or failed). Not
        for the data plane: for shutdown and tests. False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            return self._settle(self.submitted, deadline)
        finally:
            self._lock.release()

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, close the store, stop the child and the thread, within
        `timeout` seconds: records not committed by then are counted as failed, and a child
        still at work is killed."""
        self._close_by = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout + _REAP_GRACE)

    def __repr__(self) -> str:
        return (f"<ProcessWriter {self.name} pid {self.pid} [queued {self.depth}/"
                f"{self.capacity}, written {self.written}, dropped {self.dropped}, "
                f"refused {self.refused}, failed {self.failed}, restarts {self.restarts}]>")

    # -- housekeeping thread -------------------------------------------------------------------

    def _run(self) -> None:
        retention = self.retention
        next_prune = time.monotonic() + (retention.interval if retention else 0.0)
        while not self._closing:
            # During a retention pass, look for each step's answer often: the next step is
            # sent once it is in, so a pass with nothing else to do is not one step a second.
            self._wake.wait(_PRUNE_POLL if self._pruning else self.flush_interval)
            self._wake.clear()
            with self._lock:
                now = time.monotonic()
                if self._proc is None:
                    self._restart()
                self._ship()
                if self._awaited and now - self._answered_at > self.timeout:
                    self._gone(f"did not answer within {self.timeout:g} s and was killed")
                if (retention is not None and now >= next_prune and self._proc is not None
                        and self._pruning is None):
                    next_prune = now + retention.interval
                    self._pruning = (retention.max_age, retention.max_bytes, time.time(),
                                     retention.chunk)
                    self._pruned = 0
                    self._request(("retain", *self._pruning), "retain", 0)
                    self._pump()
        with self._lock:
            self._shutdown()

    def _restart(self, timeout: float | None = None) -> None:
        try:
            self._spawn(self.timeout if timeout is None else timeout)
        except StoreError as exc:
            self.last_error = str(exc)
            log.error("telemetry writer %s: %s; retrying in %g s", self.name, exc,
                      self.flush_interval)
        else:
            self.restarts += 1
            log.warning("telemetry writer %s: started a new writer process (pid %s)",
                        self.name, self.pid)

    def _shutdown(self) -> None:
        deadline = min(time.monotonic() + self.timeout, self._close_by)
        if not self._settle(self.submitted, deadline):
            # Whatever is still queued or uncommitted is lost: count it, stop the child.
            lost = self.submitted - self._settled
            proc, self._proc = self._proc, None
            self.failed += lost
            self._rows.clear()
            self._awaited.clear()
            self._in_flight = 0
            self._out.clear()
            why = ("the writer process did not commit them in time" if proc is not None else
                   self.last_error or "no writer process")
            self.last_error = (f"{lost} records were not written before the telemetry writer "
                               f"{self.name} closed: {why}")
            log.error("telemetry writer %s: %s", self.name, self.last_error)
            if proc is not None:
                _reap(proc, 0.0)  # killed: it would go on with what it was given
            return
        proc = self._proc
        if proc is None:
            return
        self._request(("close",), "close", 0)
        while self._awaited and self._proc is not None and time.monotonic() < deadline:
            self._ship()
            self._wait_io(deadline)
        self._proc = None
        _reap(proc, max(0.0, deadline - time.monotonic()))

    # -- shipping (lock held) ------------------------------------------------------------------

    def _ship(self) -> None:
        """Read the answers that arrived, turn queued records into frames, write what the pipe
        takes. Never blocks."""
        if self._proc is None:
            return
        self._collect()
        queue = self._rows
        popleft = queue.popleft
        while queue and self._proc is not None:
            count = min(len(queue), self.batch_size)
            # One popleft per row, never `list(queue)` then `queue.clear()`: the data plane
            # appends without the lock, and a row appended between those two calls (the
            # housekeeping thread ships here too) was cleared unshipped.
            batch = [popleft() for _ in range(count)]
            self._request(("write", batch, None), "write", count)
        pruning = self._pruning
        if self._prune_next and pruning is not None and self._proc is not None \
                and not self._closing:
            # The pass's next step, after the batches queued during the last one.
            self._prune_next = False
            self._request(("retain", *pruning), "retain", 0)
        self._pump()

    def _request(self, message: tuple[Any, ...], kind: str, records: int) -> None:
        try:
            data = marshal.dumps(message, _MARSHAL)
        except ValueError:  # a value of a type marshal does not know (a str subclass, say)
            data = pickle.dumps(message, protocol=_PROTOCOL)
        self._out += _HEADER.pack(len(data))
        self._out += data
        if not self._awaited:
            self._answered_at = time.monotonic()
        self._awaited.append((kind, records))
        self._in_flight += records

    def _pump(self) -> None:
        proc = self._proc
        if proc is None or not self._out:
            return
        assert proc.stdin is not None
        try:
            sent = os.write(proc.stdin.fileno(), self._out)
        except BlockingIOError:
            return
        except OSError:
            self._gone(f"exited with code {_reap(proc, self.timeout)}")
            return
        del self._out[:sent]

    def _collect(self) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self._gone(f"exited with code {_reap(proc, self.timeout)}")
                return
            self._in += chunk
        answers = self._in
        while len(answers) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(answers)
            end = _HEADER.size + size
            if len(answers) < end:
                break
            status, value = pickle.loads(answers[_HEADER.size:end])
            del answers[:end]
            self._answer(status, value)

    def _answer(self, status: str, value: Any) -> None:
        kind, records = self._awaited.popleft()
        self._answered_at = time.monotonic()
        self._in_flight -= records
        if kind == "write":
            # The child answers a write with `write_isolating`'s result.
            self._count_batch(records, *(value if status == "ok" else (0, [], str(value))))
        elif kind == "retain":
            self._pruned_step(status, value)
        elif status != "ok":
            self.last_error = str(value)
            log.error("telemetry writer %s: %s failed: %s", self.name, kind, value)

    def _pruned_step(self, status: str, value: Any) -> None:
        """A retention step is done: the pass goes on (at the next `_ship`) while a step
        deletes all it may, and ends at the first that deletes less, or fails."""
        pruning = self._pruning
        if status == "ok" and pruning is not None and value == pruning[3]:
            self._pruned += value
            self._prune_next = True
            return
        self._pruning = None
        if status != "ok":
            self.last_error = str(value)
            log.error("telemetry writer %s: retention failed: %s", self.name, value)
            return
        self._pruned += value
        if self._pruned:
            log.info("telemetry writer %s: retention removed %d records", self.name,
                     self._pruned)

    @property
    def _settled(self) -> int:
        """Submitted records whose fate is known: written, refused or failed."""
        return self.written + self.refused + self.failed

    def _gone(self, reason: str) -> None:
        """The child died or hung: count what it had not committed as failed, and say so."""
        proc, self._proc = self._proc, None
        lost = sum(records for _, records in self._awaited)
        self.failed += lost
        self._in_flight = 0
        self._awaited.clear()
        self._out.clear()
        self._in.clear()
        self._pruning, self._prune_next = None, False  # the next pass starts over
        pid = proc.pid if proc is not None else None
        self.last_error = (f"the telemetry writer process {self.name} (pid {pid}) {reason}; "
                           f"{lost} records it had not committed are lost")
        log.error("telemetry writer %s: %s", self.name, self.last_error)
        if proc is not None and proc.poll() is None:
            proc.kill()
            _reap(proc, self.timeout)
        self._wake.set()  # the thread starts a new child

    def _settle(self, target: int, deadline: float) -> bool:
        """Ship everything and wait until `target` submitted records are settled."""
        while self._settled < target:
            if self._proc is None:
                self._restart(min(self.timeout, max(0.0, deadline - time.monotonic())))
                if self._proc is None:
                    return False
            self._ship()
            if self._settled >= target:
                break
            if time.monotonic() >= deadline:
                return False
            self._wait_io(deadline)
        return True

    def _wait_io(self, deadline: float) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        poller = select.poll()
        poller.register(proc.stdout.fileno(), select.POLLIN)
        if self._out:
            poller.register(proc.stdin.fileno(), select.POLLOUT)
        poller.poll(max(0.0, min(deadline - time.monotonic(), self.flush_interval)) * 1000)
        if self._awaited and time.monotonic() - self._answered_at > self.timeout:
            self._gone(f"did not answer within {self.timeout:g} s and was killed")

    # -- the child -----------------------------------------------------------------------------

    def _spawn(self, timeout: float) -> None:
        env = dict(os.environ)
        # The child imports what the parent can (connwise from a source tree, a test's sink).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "connwise.telemetry.writer_process"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as exc:  # no file descriptor left for the pipes (EMFILE), no memory
            raise StoreError(f"cannot start the telemetry writer process {self.name}: "
                             f"{exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            os.write(proc.stdin.fileno(), _HEADER.pack(len(self._payload)) + self._payload)
            status, value = pickle.loads(_receive(proc.stdout.fileno(), deadline))
        except (OSError, EOFError, TimeoutError) as exc:
            code = _reap(proc, 0.0)
            raise StoreError(f"the telemetry writer process {self.name} exited (code {code}) "
                             f"before it opened the store ({type(exc).__name__}); its error, "
                             "if any, is on stderr") from None
        if status != "ok":
            _reap(proc, timeout)
            raise StoreError(str(value))
        for stream in (proc.stdin, proc.stdout):
            os.set_blocking(stream.fileno(), False)
        with contextlib.suppress(AttributeError, OSError):  # Linux only; the default works too
            fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._proc = proc


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Close our ends of `proc`'s pipes (EOF ends it) and wait; kill it after `timeout`."""
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _receive(fd: int, deadline: float | None) -> bytes:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    if size > MAX_FRAME:
        raise EOFError(f"frame of {size} bytes")
    return _read_exactly(fd, size, deadline)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not poller.poll(remaining * 1000):
                continue
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("end of stream")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# -- the child ---------------------------------------------------------------------------------

def _reply(fd: int, status: str, value: Any) -> None:
    data = pickle.dumps((status, value), protocol=_PROTOCOL)
    os.write(fd, _HEADER.pack(len(data)) + data)


def _decode(frame: bytes) -> Any:
    """A request frame: marshal, or pickle (which starts with its PROTO opcode) for a message
    marshal could not write."""
    return pickle.loads(frame) if frame[:1] == _PICKLE_PROTO else marshal.loads(frame)


def serve(inp: int, out: int) -> int:
    """The child's loop: open the store, then one answer per request until `close` or EOF."""
    try:
        open_sink = pickle.loads(_receive(inp, None))
        sink = open_sink()
    except EOFError:
        return 0
    except Exception as exc:
        _reply(out, "error", str(exc) if isinstance(exc, StoreError) else
               f"{type(exc).__name__}: {exc}")
        return 1
    _reply(out, "ok", None)
    while True:
        try:
            message = _decode(_receive(inp, None))
        except EOFError:
            sink.close()  # the parent is gone: nothing more will come
            return 0
        op = message[0]
        try:
            if op == "write":
                result: Any = write_isolating(sink, message[1], message[2])
            elif op == "retain":
                result = sink.retain(max_age=message[1], max_bytes=message[2],
                                     now=message[3], limit=message[4])
            elif op == "close":
                sink.close()
                _reply(out, "ok", None)
                return 0
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            _reply(out, "error", f"{type(exc).__name__}: {exc}")
        else:
            _reply(out, "ok", result)


def main() -> int:
    # The parent decides when the store closes: a SIGTERM or ^C to the process group must not
    # end the child before the parent's drain has flushed its queue into it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return serve(0, out)


if __name__ == "__main__":
    sys.exit(main())

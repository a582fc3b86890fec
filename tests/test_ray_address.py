"""`run --ray ADDRESS`: an address of no form Ray reads, or one nothing answers at, is refused in
one line before a run is stored; Ray joining a cluster is waited for within a bound and can be
cancelled, however long Ray itself would retry."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from audit.errors import UserError
from audit.progress import Cancelled
from audit.run import parallel
from audit.run.lifecycle import RunOptions
from audit.run.parallel import check_ray_reachable, connect_ray, ray_endpoint
from tui.cli import main


@pytest.mark.parametrize("address, endpoint", [
    ("local", None), ("auto", None), ("head:6379", ("head", 6379)), ("10.0.0.5:6380", ("10.0.0.5", 6380)),
    ("ray://head:10001", ("head", 10001)), ("[::1]:6379", ("::1", 6379)), ("h:65535", ("h", 65535)),
])
def test_the_addresses_ray_reads(address, endpoint):
    assert ray_endpoint(address) == endpoint


@pytest.mark.parametrize("address", ["foo", "head:", ":6379", "head:0", "head:65536", "head:port", "ray://head", "head:-1", "[]:6379"])
def test_an_address_of_no_form_ray_reads_is_refused_before_anything_runs(address):
    with pytest.raises(UserError, match=r"^--ray takes 'local', 'auto' or a Ray cluster's HOST:PORT"):
        RunOptions(ray_address=address)


def closed_port() -> int:
    """A port on this machine nothing listens at."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_nothing_answers_at_is_named():
    port = closed_port()
    with pytest.raises(UserError, match=rf"^cannot connect to the Ray cluster at 127.0.0.1:{port}: connection refused$"):
        check_ray_reachable(f"127.0.0.1:{port}")


def test_an_address_that_answers_and_local_are_let_through():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_ray_reachable(f"127.0.0.1:{listening.getsockname()[1]}")
    check_ray_reachable("local")


def test_without_ray_installed_it_says_how_to_install_it(monkeypatch):
    found = parallel.importlib.util.find_spec
    monkeypatch.setattr(parallel.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else found(name, *a))
    with pytest.raises(UserError, match=r"^--ray needs Ray: pip install 'edge-audit\[ray\]'$"):
        check_ray_reachable("local")


def test_the_run_is_refused_before_it_is_stored(capsys, tmp_path, tiny_llama):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'name = "on ray"\nmodel = {json.dumps(str(tiny_llama))}\n\n[[variants]]\nprune = "magnitude"\n')
    store = tmp_path / "results.db"
    port = closed_port()
    code = main(["run", str(plan), "--ray", f"127.0.0.1:{port}", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"edge-audit: error: cannot connect to the Ray cluster at 127.0.0.1:{port}: connection refused\n"
    assert not store.exists()


class FakeRay:
    """`ray.init` as a stand-in: it notes what it was asked and on which thread, blocks until
    `release` is set (as Ray does at an address that accepts connections but is no Ray
    cluster's), then raises `error` if given."""

    def __init__(self, error: BaseException | None = None, block: bool = False) -> None:
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.error = error
        self.asked: dict | None = None
        self.thread: threading.Thread | None = None

    def init(self, **kwargs) -> None:
        self.asked, self.thread = kwargs, threading.current_thread()
        self.release.wait()
        if self.error is not None:
            raise self.error


def test_ray_joining_is_waited_for_within_a_bound():
    ray = FakeRay(block=True)
    try:
        with pytest.raises(UserError, match=r"^cannot connect to the Ray cluster at head:6379: Ray did not join it within 0.3 s"):
            connect_ray(ray, "head:6379", None, timeout=0.3)
    finally:
        ray.release.set()  # the thread left waiting ends


def test_a_stopped_run_stops_waiting_for_ray():
    ray = FakeRay(block=True)
    cancel = threading.Event()
    cancel.set()
    try:
        with pytest.raises(Cancelled):
            connect_ray(ray, "head:6379", cancel, timeout=60)
    finally:
        ray.release.set()


def test_rays_own_error_is_given_on_one_line():
    ray = FakeRay(ConnectionError("Failed to connect to Ray cluster at head:6379\nsee the logs"))
    with pytest.raises(UserError) as raised:
        connect_ray(ray, "head:6379", None, timeout=5)
    assert str(raised.value) == "cannot connect to the Ray cluster at head:6379: ConnectionError: Failed to connect to Ray cluster at head:6379"


def test_a_cluster_that_answers_is_joined_on_a_thread_of_its_own_and_local_starts_one():
    ray = FakeRay()
    connect_ray(ray, "head:6379", None, timeout=5)
    assert ray.asked["address"] == "head:6379" and ray.thread is not threading.current_thread()
    connect_ray(ray, "local", None, timeout=5)
    assert ray.asked["address"] is None and ray.asked["include_dashboard"] is False


def test_a_cluster_started_here_is_started_on_this_thread_and_keeps_the_sigterm_handler():
    """Ray has the processes it starts killed when their starting thread ends, and sets its own
    SIGTERM handler: "local" starts on the caller's thread, which gets its handler back."""
    import signal

    def ours(signum, frame):
        raise SystemExit(143)

    class Starting(FakeRay):
        def init(self, **kwargs) -> None:
            signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as ray.init does
            super().init(**kwargs)

    before = signal.signal(signal.SIGTERM, ours)
    try:
        ray = Starting()
        connect_ray(ray, "local", None)
        assert ray.thread is threading.current_thread()
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)

"""Thread counts fitted to the device's load, and the wait environment set before the inference
libraries load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hardware.load as load
from audit.errors import UserError
from audit.threads import WAIT_ENVIRONMENT, ThreadChoice, choose_threads, prepare_wait_environment, resolve_threads
from tests.fake_devices import write_tree

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_times_are_read_from_the_first_line_of_proc_stat(tmp_path):
    root = write_tree(tmp_path / "dev", {"/proc/stat": "cpu  100 20 30 800 40 5 5 0 7 0\ncpu0 50 10 15 400 20 2 3 0 0 0\n"})
    times = load.read_cpu_times(root)
    hz = os.sysconf("SC_CLK_TCK")
    # busy: user + nice + system + irq + softirq + steal = 100 + 20 + 30 + 5 + 5 + 0 = 160 ticks;
    # in all: busy + idle + iowait = 160 + 800 + 40 = 1000 ticks (guest time is inside user).
    assert times == load.CpuTimes(160 / hz, 1000 / hz)


@pytest.mark.parametrize("text", ["", "cpu\n", "intr 1 2 3\n", "cpu a b c d\n"])
def test_cpu_times_are_not_available_rather_than_an_error(tmp_path, text):
    root = write_tree(tmp_path / "dev", {"/proc/stat": text})
    assert load.read_cpu_times(root) is None
    assert load.others_busy_cores(0.0, root) is None


def test_others_busy_is_the_device_busy_time_less_this_process_own(monkeypatch):
    readings = iter([load.CpuTimes(10.0, 40.0), load.CpuTimes(10.9, 40.5)])
    own = iter([3.0, 3.2])
    clock = iter([100.0, 100.5])
    monkeypatch.setattr(load, "read_cpu_times", lambda root=None, cpus=None: next(readings))
    monkeypatch.setattr(load, "_own_cpu_s", lambda: next(own))
    monkeypatch.setattr(load.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    # 0.9 s busy over 0.5 s of wall time, 0.2 s of it this process's own: (0.9 - 0.2) / 0.5 = 1.4 cores.
    assert load.others_busy_cores(0.5) == pytest.approx(1.4)


def test_others_busy_is_never_negative(monkeypatch):
    readings = iter([load.CpuTimes(10.0, 40.0), load.CpuTimes(10.1, 40.5)])
    own = iter([3.0, 3.3])  # counted a tick later than the device: more than the device saw
    monkeypatch.setattr(load, "read_cpu_times", lambda root=None, cpus=None: next(readings))
    monkeypatch.setattr(load, "_own_cpu_s", lambda: next(own))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    assert load.others_busy_cores(0.0) == 0.0


def test_others_busy_sees_a_process_spinning_beside_it():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = load.others_busy_cores(0.5)
    finally:
        hog.kill()
        hog.wait()
    assert busy is not None and busy >= 0.5


@pytest.mark.parametrize(
    ("cores", "others", "reserve", "threads"),
    [
        (2, 0.0, 0, 2),  # idle: every core
        (2, 0.3, 0, 2),  # a service waking now and then takes no core
        (2, 0.6, 0, 1),  # most of a core in use: leave it
        (2, 1.0, 0, 1),
        (2, 2.0, 0, 1),  # every core busy: still one thread, never none
        (4, 1.4, 0, 3),
        (4, 1.5, 0, 2),  # half a core rounds up
        (4, 0.0, 1, 3),  # the app keeps one for its screen
        (4, 1.0, 1, 2),
        (2, 0.0, 1, 1),
        (1, 0.0, 1, 1),
        (8, None, 0, 8),  # load unknown: every core
    ],
)
def test_threads_are_the_cores_others_leave_free(cores, others, reserve, threads):
    assert choose_threads(cores, others, reserve).threads == threads


def test_cores_unknown_gives_one_thread_and_a_negative_reserve_is_refused():
    assert choose_threads(None, 0.0).threads == 1
    with pytest.raises(ValueError, match="reserve"):
        choose_threads(2, 0.0, -1)


def test_the_choice_says_why_in_plain_words():
    assert choose_threads(2, 0.0).describe() == "2 threads (2 cores free)"
    assert choose_threads(2, 1.04).describe() == "1 thread (other processes keep 1.0 of 2 cores busy)"
    assert choose_threads(4, 0.0, 1).describe() == "3 threads (1 core left for the app)"
    assert ThreadChoice(3, 2, None, given=True).describe() == "3 threads (as given)"
    assert choose_threads(2, 1.04).to_dict()["others_busy_cores"] == 1.04


def test_scoring_workers_take_every_core_but_those_left_on_purpose():
    # Beside a process keeping a core busy, forwards split op by op take the free core only;
    # workers that never wait on one another take both and share the busy one.
    busy = choose_threads(2, 1.0).with_row_workers()
    assert (busy.threads, busy.workers) == (1, 2)
    assert busy.describe() == "1 thread, scoring on 2 workers of one thread (other processes keep 1.0 of 2 cores busy)"
    assert busy.to_dict()["scoring_workers"] == 2
    assert choose_threads(2, 0.0).with_row_workers().describe() == "2 threads (2 cores free)"
    assert choose_threads(4, 2.0, 1).with_row_workers().workers == 3  # the app's core stays free
    assert choose_threads(2, 0.0, 1).with_row_workers().workers == 1
    assert choose_threads(None, 0.0).with_row_workers().workers == 1
    assert ThreadChoice(3, 2, None, given=True).with_row_workers().workers == 3  # as given
    assert choose_threads(2, 1.0).workers is None  # a backend without workers
    assert choose_threads(2, 1.0).to_dict()["scoring_workers"] is None


def test_row_workers_compute_with_one_thread_each_and_leave_other_threads_alone():
    import threading

    import torch

    from audit.models.workers import RowWorkers, row_bounds

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    workers = RowWorkers(2)
    try:
        assert workers.map(torch.get_num_threads, [(), (), ()]) == [1, 1, 1]
        assert workers.map(torch.is_inference_mode_enabled, [()]) == [True]
        assert torch.get_num_threads() == 2  # the caller's count
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]  # a thread started afterwards takes the process's count, not 1
        with pytest.raises(ZeroDivisionError):
            workers.map(lambda x: 1 / x, [(1,), (0,)])
        assert workers.map(lambda x: x * 2, [(1,), (2,)]) == [2, 4]  # still serving
    finally:
        workers.close()
        torch.set_num_threads(before)
    assert not any(t.is_alive() for t in workers._threads)
    workers.stop()  # again, as a dropped model's finalizer does: nothing left on the queue
    assert workers._tasks.empty()
    with pytest.raises(ValueError, match="at least 2"):
        RowWorkers(1)
    assert row_bounds(5, 2) == [(0, 2), (2, 5)]
    assert row_bounds(2, 4) == [(0, 1), (1, 2)]
    assert row_bounds(7, 1) == [(0, 7)]


def test_row_workers_wait_idle_until_every_task_given_has_finished():
    import threading
    import time

    from audit.models.workers import RowWorkers

    workers = RowWorkers(2)
    try:
        release = threading.Event()
        finished: list[int] = []
        slow = workers.submit(lambda: (release.wait(), time.sleep(0.1), finished.append(1)), ())
        failing = workers.submit(lambda: 1 / 0, ())
        threading.Timer(0.2, release.set).start()
        workers.wait_idle()
        assert finished == [1] and slow.done() and isinstance(failing.exception(), ZeroDivisionError)
        workers.wait_idle()  # nothing given: returns at once
    finally:
        workers.close()
    with pytest.raises(RuntimeError, match="stopped"):
        workers.submit(int, ())  # it would never run


EXIT_MID_SCORING = """
import sys, threading, torch
from audit.models.workers import RowWorkers
workers = RowWorkers(2)
a = torch.randn(256, 256)
started = threading.Semaphore(0)
def rows():
    started.release()
    for _ in range(400):
        a @ a
futures = [workers.submit(rows, ()) for _ in range(6)]
started.acquire(); started.acquire()  # both threads inside PyTorch
sys.exit(3)
"""


def test_exiting_while_workers_compute_keeps_the_exit_code_instead_of_aborting():
    # Before, the threads were killed inside PyTorch as the interpreter finalized, and the C++
    # runtime aborted the process (exit 134): a second Ctrl-C in the middle of scoring.
    done = subprocess.run([sys.executable, "-c", EXIT_MID_SCORING], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert (done.returncode, done.stderr) == (3, "")


def test_abandoned_workers_cancel_tasks_not_started_and_end():
    import threading

    from audit.models.workers import RowWorkers

    workers = RowWorkers(2)
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> bool:
        started.release()
        return release.wait()

    running = [workers.submit(hold, ()) for _ in range(2)]
    waiting = [workers.submit(int, ()) for _ in range(3)]
    workers.stop()  # its end marks are on the queue too
    started.acquire()
    started.acquire()  # both threads have taken their task
    threading.Timer(0.2, release.set).start()
    workers.abandon(timeout=30)
    assert not any(t.is_alive() for t in workers._threads)
    assert [f.result() for f in running] == [True, True] and all(f.cancelled() for f in waiting)
    workers.wait_idle()  # nothing counted as unfinished


def test_abandoned_workers_wait_at_most_the_timeout_in_all(monkeypatch):
    import audit.models.workers as workers_module
    from audit.models.workers import RowWorkers

    workers = RowWorkers(2)
    threads, joined = workers._threads, []

    class Stuck:  # a thread whose task never ends
        def join(self, timeout):
            joined.append(timeout)

    workers._threads = [Stuck(), Stuck()]
    clock = iter([100.0, 100.0, 130.0])  # the deadline set, then each join
    monkeypatch.setattr(workers_module.time, "monotonic", lambda: next(clock))
    workers.abandon(timeout=50)
    assert joined == [50.0, 20.0]  # not 50 s for each thread in turn
    monkeypatch.undo()
    workers._threads = threads
    workers.close()  # the real threads took the end marks given for the stuck ones


def test_gather_gives_results_in_order_and_raises_the_first_failure_once_all_have_finished():
    import threading
    import time
    from concurrent.futures import Future

    from audit.models.workers import done_future, gather

    assert gather([done_future(1), done_future([2, 3])]) == [1, [2, 3]]
    failed: Future = Future()
    failed.set_exception(KeyError("first"))
    later_failed: Future = Future()
    later_failed.set_exception(ValueError("second"))
    slow: Future = Future()
    threading.Thread(target=lambda: (time.sleep(0.2), slow.set_result(4))).start()
    with pytest.raises(KeyError, match="first"):
        gather([slow, failed, later_failed])
    assert slow.done()  # waited for, though a failure came back first


def test_a_count_past_a_few_threads_per_cpu_is_refused(monkeypatch):
    from audit.models import LoadOptions
    from audit.threads import THREADS_PER_CPU, most_threads, thread_count_problem

    monkeypatch.setattr("hardware.load.read_cores_online", lambda: 2)
    assert most_threads() == 2 * THREADS_PER_CPU == 8
    assert thread_count_problem(1) is None and thread_count_problem(8) is None  # more than the CPUs, if asked
    assert thread_count_problem(0) == "must be at least 1, not 0"
    assert thread_count_problem(9) == "must be at most 8 on this device (4 per CPU, 2 CPUs), not 9: more threads than CPUs only wait on one another"
    with pytest.raises(UserError, match="--threads must be at most 8 on this device"):
        LoadOptions(threads=99999)
    monkeypatch.setattr("hardware.load.read_cores_online", lambda: None)  # unknown: as one CPU
    assert most_threads() == THREADS_PER_CPU


def test_a_count_given_by_the_user_is_kept_whatever_the_load():
    choice = resolve_threads(3, reserve=1)
    assert (choice.threads, choice.given) == (3, True)


def test_the_wait_environment_is_set_unless_the_user_chose_a_policy():
    environ: dict[str, str] = {}
    assert prepare_wait_environment(environ) == WAIT_ENVIRONMENT and environ == WAIT_ENVIRONMENT
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}, {"KMP_BLOCKTIME": "1"}):
        environ = dict(chosen)
        assert prepare_wait_environment(environ) == {} and environ == chosen


def test_the_command_line_sets_the_wait_environment_before_torch_loads():
    # A fresh process, as a user runs it: the variable must be in place when torch is imported.
    code = (
        "import json, os, sys\n"
        "from tui.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        "main(['device', '--json'])\n"
        "print(json.dumps({k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"GOMP_SPINCOUNT": WAIT_ENVIRONMENT.get("GOMP_SPINCOUNT"), "OMP_WAIT_POLICY": WAIT_ENVIRONMENT.get("OMP_WAIT_POLICY")}


class _TorchModel:
    backend = "pytorch"
    threads = None


def test_the_app_leaves_its_screen_a_core_and_fits_threads_as_each_job_starts(monkeypatch, tmp_path):
    import torch

    from audit import threads
    from tests.app_support import FrozenDevice
    from tui.app import APP_RESERVED_CORES, create_app

    app = create_app("", store=tmp_path / "store.sqlite", device=FrozenDevice())
    assert app.options.reserve_cores == APP_RESERVED_CORES == 1
    asked = []

    def busy_device(reserve=0, interval_s=0.25):
        asked.append(reserve)
        return choose_threads(2, 1.0, reserve)

    monkeypatch.setattr(threads, "auto_threads", busy_device)
    before = torch.get_num_threads()
    model = _TorchModel()
    monkeypatch.setattr(app, "session", type("S", (), {"model": model})(), raising=False)
    try:
        app._fit_threads("load")  # a load chooses for itself
        assert asked == []
        app._fit_threads("probe")
        assert asked == [1] and torch.get_num_threads() == 1
        assert model.threads.describe() == "1 thread (other processes keep 1.0 of 2 cores busy; 1 core left for the app)"
    finally:
        torch.set_num_threads(before)


def test_a_loaded_model_says_how_many_threads_it_computes_with(tiny_llama):
    import torch

    from audit.models import LoadOptions, load_model
    from audit.progress import drive

    model = drive(load_model(str(tiny_llama)))
    assert model.threads.threads == torch.get_num_threads() == (os.cpu_count() or 1) and not model.threads.given
    assert model.threads.workers == model.threads.threads  # an idle device: every core either way
    try:
        model = drive(load_model(str(tiny_llama), LoadOptions(threads=1)))
        assert model.threads.given and model.threads.threads == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


def test_onnx_runtime_threads_spin_briefly_unless_the_user_asked_for_a_passive_wait():
    from audit.threads import ONNX_SPIN_US, onnx_wait_entries

    assert onnx_wait_entries({}) == {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(ONNX_SPIN_US)}
    assert onnx_wait_entries({"OMP_WAIT_POLICY": "passive"}) == {"session.intra_op.allow_spinning": "0"}
    assert onnx_wait_entries({"OMP_WAIT_POLICY": "ACTIVE"})["session.intra_op.allow_spinning"] == "1"


def test_onnx_sessions_take_the_threads_and_the_wait(monkeypatch):
    pytest.importorskip("onnxruntime")
    from audit.models.loader import onnx_session_options
    from audit.threads import ONNX_SPIN_US

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    options = onnx_session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == str(ONNX_SPIN_US)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert onnx_session_options(1).get_session_config_entry("session.intra_op.allow_spinning") == "0"

"""The suite's final check (tests/conftest.py `pytest_sessionfinish`) names and kills what a session left running."""

from pathlib import Path

import psutil

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_process_left_running_fails_the_session(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pid_file = pytester.path / "leaked.pid"
    pytester.makepyfile(
        test_leaky=f"""
        import subprocess, sys

        def test_starts_a_server_and_forgets_it(tmp_path):
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(tmp_path)])
            open({str(pid_file)!r}, "w").write(str(proc.pid))
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*leftover check FAILED*", "*pid *time.sleep(300)*"])
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "not killed"


def test_a_clean_session_says_so(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_clean="""
        import subprocess, sys

        def test_starts_and_stops(tmp_path):
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            proc.terminate()
            proc.wait()
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*leftover check: no server or worker of this session is still running*"])

"""The --qpu SPANK plugin's own logic, compiled with stand-ins for Slurm's SPANK calls.

No cluster needed: only gcc and libslurm-dev's <slurm/spank.h> (``scripts/slurm.sh
install``); without them the test is skipped. tests/slurm/test_cluster.py runs the
real plugin under sbatch.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "deploy" / "slurm" / "spank" / "qhpc_qpu.c"

HARNESS = """
#include <stdarg.h>
#include "%(plugin)s"

static int registered;
void slurm_error(const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	vfprintf(stderr, format, ap);
	va_end(ap);
	fputc('\\n', stderr);
}
spank_err_t spank_option_register(spank_t sp, struct spank_option *opt)
{ (void) sp; (void) opt; registered = 1; return ESPANK_SUCCESS; }
const char *spank_strerror(spank_err_t err) { (void) err; return "stub"; }
spank_context_t spank_context(void) { return S_CTX_LOCAL; }
spank_err_t spank_job_control_setenv(spank_t sp, const char *n, const char *v, int o)
{ (void) sp; (void) n; (void) v; (void) o; return ESPANK_SUCCESS; }
int spank_remote(spank_t sp) { (void) sp; return 0; }
spank_err_t spank_setenv(spank_t sp, const char *n, const char *v, int o)
{ (void) sp; (void) n; (void) v; (void) o; return ESPANK_SUCCESS; }

/* argv[1]: the plugstack argument; argv[2..]: --qpu values to check. */
int main(int argc, char *argv[])
{
	char *args[] = { argv[1] };
	int i, rc = slurm_spank_init(NULL, 1, args);
	printf("init %%d registered %%d\\n", rc, registered);
	for (i = 2; rc == ESPANK_SUCCESS && i < argc; i++)
		printf("%%s %%s\\n", argv[i], check_qpu(0, argv[i], 0) ? "refused" : "ok");
	return 0;
}
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or not Path("/usr/include/slurm/spank.h").exists():
        pytest.skip("needs gcc and libslurm-dev (bash scripts/slurm.sh install)")
    folder = tmp_path_factory.mktemp("spank")
    (folder / "harness.c").write_text(HARNESS % {"plugin": PLUGIN})
    subprocess.run(
        ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", str(folder / "harness"),
         str(folder / "harness.c")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return folder / "harness"


def _run(plugin: Path, *args: str) -> tuple[list[str], str]:
    done = subprocess.run(
        [str(plugin), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.splitlines(), done.stderr


def test_allowed_names_are_whole_names(plugin: Path) -> None:
    lines, errors = _run(plugin, "allowed=sim,emu", "sim", "emu", "si", "sim,emu", "nosuch")
    assert lines == [
        "init 0 registered 1", "sim ok", "emu ok", "si refused", "sim,emu ok", "nosuch refused"
    ]  # fmt: skip
    assert "unknown QPU 'nosuch' (allowed: sim,emu)" in errors


def test_an_allowed_list_too_long_fails_instead_of_being_cut(plugin: Path) -> None:
    """Cut at 511 characters, the last name would shrink to an allowed prefix of itself."""
    names = ["q" * 501, "abcdefghij"]  # 512 characters
    lines, errors = _run(plugin, "allowed=" + ",".join(names), "abc")
    assert lines[0] != "init 0 registered 1" and lines[0].endswith("registered 0")
    assert "allowed= is longer than 511 characters" in errors
    fits = ["q" * 500, "abcdefghij"]  # 511 characters
    lines, _ = _run(plugin, "allowed=" + ",".join(fits), "abc", "abcdefghij")
    assert lines == ["init 0 registered 1", "abc refused", "abcdefghij ok"]

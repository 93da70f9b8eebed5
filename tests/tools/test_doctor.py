"""``python -m gpu_backprop doctor``: its report, and its exit status (0 compiled, 1 a kernel fails, 2 missing)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_backprop.kernels import _cuda
from gpu_backprop.tools import doctor
from gpu_backprop.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = doctor.toolchain_problem()
needs_nvrtc = pytest.mark.skipif(PROBLEM is not None,
                                 reason=f"needs CuPy and NVRTC (the test extra brings them on Linux x86-64): {PROBLEM}")
KEYS = ["python", "numpy", "cupy", "cuda", "device", "nvrtc", "headers", "nccl", "tf32", "mpi", "kernels", "problems"]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


def test_without_cupy_the_doctor_says_how_to_install_it_and_exits_2() -> None:
    # sys.modules["cupy"] = None makes `import cupy` fail as on a machine without it, installed or not
    proc = _run("import sys; sys.modules['cupy'] = None\n"
                "from gpu_backprop.tools.cli import main; sys.exit(main(['doctor']))")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: CuPy is not installed: pip install 'gpu_backprop[cuda13]'")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[1].startswith("python ")  # what is known is still reported


def test_a_bad_arch_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--arch", "hopper"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--arch takes a GPU architecture like sm_90" in err


def test_an_arch_is_read_as_nvrtc_spells_it() -> None:
    parser = argparse.ArgumentParser()
    read = [doctor._parse_arch(parser, a) for a in ("sm_090", "90", " compute_80 ", "sm_100")]
    assert read == ["90", "90", "80", "100"]


@needs_nvrtc
def test_the_report_lists_the_facts_and_every_kernel_compiles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--arch", "sm_90"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gpu_backprop ") and out[0].endswith(" doctor")
    assert [line.split()[0] for line in out[1:len(KEYS) + 1]] == KEYS
    facts = {line.split()[0]: line.split(None, 1)[1] for line in out[1:len(KEYS) + 1]}
    n = len(doctor.compile_all("90"))
    assert facts["kernels"].startswith(f"{n} of {n} compiled for sm_90 in ")
    assert "-arch=sm_90" in facts["kernels"] and "-ftz=true" in facts["kernels"]
    assert facts["cupy"].startswith(__import__("cupy").__version__)
    problems = out[len(KEYS) + 1:]
    assert facts["problems"] == (str(len(problems)) if problems else "none")
    assert all(line.startswith("  - ") and ": " in line for line in problems)  # each with its fix


@needs_nvrtc
def test_a_kernel_that_fails_is_named_with_its_first_error_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(_cuda.RAW, "broken", 'extern "C" __global__ void KERNEL_NAME(T* x) { x[0] = y; }\n')
    assert main(["doctor", "--arch", "90"]) == 1
    out = capsys.readouterr().out
    n = len(doctor.compile_all("90"))
    assert f"{n - 2} of {n} compiled for sm_90" in out
    assert '  - kernel broken [float32] does not compile: line 2: error: identifier "y" is undefined: ' in out
    assert '  - kernel broken [float64] does not compile: ' in out


@needs_nvrtc
def test_without_nvrtc_the_doctor_says_which_wheel_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cuda.pathfinder import DynamicLibNotFoundError
    from cupy_backends.cuda.libs import nvrtc

    def missing() -> None:  # what cuda.pathfinder raises without the nvidia-cuda-nvrtc wheel or a toolkit
        raise DynamicLibNotFoundError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": ...')

    monkeypatch.setattr(nvrtc, "getVersion", missing)
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: NVRTC (libnvrtc) is not found (DynamicLibNotFoundError: Failure finding")
    assert "pip install 'nvidia-cuda-nvrtc==13.*'" in err


@needs_nvrtc
def test_an_arch_this_nvrtc_cannot_build_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--arch", "sm_50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not sm_50; pass one of those to --arch" in err


def test_first_error_finds_the_error_line_without_the_program_path() -> None:
    log = ("/tmp/x/1a2b.cubin.cu(3): warning #177-D: variable \"q\" was declared but never referenced\n"
           "/tmp/x/1a2b.cubin.cu(17): error: identifier \"T\" is undefined\n\n1 error detected\n")
    assert doctor.first_error(log) == 'line 17: error: identifier "T" is undefined'
    assert doctor.first_error("") == "(empty log)"

"""The benchmark section of REPORT.md: rendered from pytest-benchmark JSON, spliced in place."""
import json

from moegeo import bench_report


def fake_results(path, closed=0.01, jacrev=0.05):
    group = "jacobians [E=8 d=64 h=128 N=512]"
    bench = lambda method, t, **extra: dict(group=group, name=method, stats=dict(median=t, min=t, rounds=3),  # noqa: E731
                                            extra_info=dict(method=method, max_rel_error=1e-7, **extra))
    path.write_text(json.dumps(dict(machine_info=dict(python_version="3.11"), benchmarks=[
        bench("closed_form", closed), bench("vmap_jacrev", jacrev, baseline=True)])))


def test_section_reports_speedup_against_baseline_and_target(tmp_path):
    results, report = tmp_path / "r.json", tmp_path / "REPORT.md"
    fake_results(results)
    report.write_text("# claims report\n\nverdicts here\n")
    bench_report.update_report(results, report)
    text = report.read_text()
    assert text.startswith("# claims report\n\nverdicts here")
    assert "| closed_form | 10.00 ms | 5.00x |" in text
    assert "closed-form Jacobians vs vmap(jacrev), paper size (goal >= 3x) | 5.00x | yes |" in text


def test_section_is_replaced_not_appended_twice(tmp_path):
    results, report = tmp_path / "r.json", tmp_path / "REPORT.md"
    fake_results(results)
    bench_report.update_report(results, report)
    fake_results(results, closed=0.025)
    bench_report.update_report(results, report)
    text = report.read_text()
    assert text.count(bench_report.BEGIN) == 1
    assert "2.00x | no |" in text
    assert bench_report.existing_section(text).startswith(bench_report.BEGIN)
    assert bench_report.splice("# new claims report\n", bench_report.existing_section(text)).count("## Benchmarks") == 1

"""heron.train.plot: the evaluation points of the runs' comparison figure on the time axis."""

import pytest

from heron.train.plot import elapsed_at, plot_runs

TRAIN = [{"step": 10.0, "elapsed_s": 5.0, "loss": 2.0}, {"step": 20.0, "elapsed_s": 9.0, "loss": 1.5},
         {"step": 30.0, "elapsed_s": 15.0, "loss": 1.2}]


def test_evaluations_between_logged_steps_are_interpolated():
    assert elapsed_at(TRAIN, 20.0) == 9.0
    assert elapsed_at(TRAIN, 15.0) == pytest.approx(7.0)
    assert elapsed_at(TRAIN, 27.0) == pytest.approx(13.2)
    assert elapsed_at(TRAIN, 5.0) is None and elapsed_at(TRAIN, 31.0) is None
    assert elapsed_at(TRAIN[:1], 10.0) == 5.0 and elapsed_at([], 10.0) is None


def test_plot_runs_writes_the_figure(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.csv").write_text("step,loss,elapsed_s\n" + "".join(f"{s},{2.0 - s / 100},{s / 2}\n" for s in (10, 20, 30)))
    (run / "eval.csv").write_text("step,eval_bits_per_token\n14,2.5\n28,2.2\n")
    png = plot_runs({"model": run}, tmp_path / "curves.png", "title")
    assert png.is_file() and png.stat().st_size > 1000


def test_command_line_reports_a_missing_run_in_one_line(capsys):
    import pytest

    from heron.train.plot import main

    with pytest.raises(SystemExit) as exit_info:
        main(["/no/such/run"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("python -m heron.train.plot: error: /no/such/run")

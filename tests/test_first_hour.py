"""What a new user meets in the first hour: where a missing relative data.root was looked for, `flowkd eval`
on an image folder as `init` takes it, progress as one line per epoch when the output is not a terminal."""

import sys

import torch

import flowkd
from flowkd.cli import main
from test_init import image_folder


def test_a_relative_data_root_that_is_missing_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "digits_cnn", "--data", "imagefolder", "--root", "imgs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"data path not found: imgs (resolved to {tmp_path / 'imgs'}" in err[0]
    assert "read from the working folder, not the config's" in err[0]


def test_eval_takes_an_image_folder_as_init_does(tmp_path, capsys, one_thread):
    data = image_folder(tmp_path / "imgs", classes=3, side=8, mode="L")
    assert main(["eval", "--model", "digits_cnn", "--data", str(data), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cosine    mAP") and "NCM acc" in out


def test_progress_is_one_line_per_epoch_when_not_a_terminal(capsys, one_thread):
    assert not sys.stderr.isatty()  # pytest captures it
    g = torch.Generator().manual_seed(0)
    data = flowkd.ArrayDataset(torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8),
                               torch.randint(0, 10, (40,), generator=g), classes=[str(c) for c in range(10)])
    model = flowkd.create_model("digits_cnn", in_channels=1, in_size=8)
    flowkd.train(model, flowkd.Loader(data, batch_size=16), flowkd.SupervisedStep(model), epochs=[3], lr=[1e-3],
                 summary=False)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"train {e}/3" for e in (1, 2, 3)], lines
    assert all(line.split(": ")[1].startswith("3 batches in ") for line in lines)

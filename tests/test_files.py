"""gdp_det.files: the writes an interruption cannot leave half done."""
import os
from pathlib import Path

import pytest

from gdp_det import files
from gdp_det.files import atomic_write, publish, staging_dir


def test_publish_moves_the_set_with_its_marker_last(tmp_path, monkeypatch):
    """Replacing a set (``--force``): an interruption after the first file leaves the
    old marker removed, never beside a file of the new set; the staging dir goes."""
    out = tmp_path / 'out'
    atomic_write(str(out / 'model.pth'), 'old model')
    atomic_write(str(out / 'report.json'), 'old report')
    real_replace, moved = os.replace, []

    def interrupted(src, dst):
        if moved:
            raise KeyboardInterrupt
        moved.append(dst)
        real_replace(src, dst)
    with pytest.raises(KeyboardInterrupt):
        with staging_dir(str(out)) as tmp:
            for name in ('model.pth', 'report.json'):
                (Path(tmp) / name).write_text('new')
            monkeypatch.setattr(files.os, 'replace', interrupted)
            publish(tmp, str(out), ['model.pth', 'report.json'])
    assert sorted(os.listdir(out)) == ['model.pth']  # no marker, no staging dir
    assert (out / 'model.pth').read_text() == 'new'
    monkeypatch.setattr(files.os, 'replace', real_replace)
    with staging_dir(str(out)) as tmp:
        for name in ('model.pth', 'report.json'):
            (Path(tmp) / name).write_text('newer')
        publish(tmp, str(out), ['model.pth', 'report.json'])
    assert sorted(os.listdir(out)) == ['model.pth', 'report.json']
    assert (out / 'report.json').read_text() == 'newer'

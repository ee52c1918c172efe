"""The README's demo command: real config, real pipeline, real photos."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_demo_writes_checkpoint_and_png(tmp_path):
    out = subprocess.run(
        [sys.executable, 'tools/demo.py', '--iters', '2', '--batch-size', '2',
         '--work-dir', str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert osp.isfile(tmp_path / 'iter_2.pth')
    png = tmp_path / 'reconstruction.png'
    assert osp.isfile(png)
    from PIL import Image
    w, h = Image.open(png).size
    assert w > 4 * 256 and h > 256  # 4 columns, several photos
    assert f'reconstruction : {png}' in out.stdout
    # the watching hooks: pictures every iteration (interval iters // 2),
    # the last one is the final picture; k-NN on crops labelled by photo
    pics = tmp_path / 'reconstructions'
    assert sorted(p.name for p in pics.iterdir()) == [
        'iter_000001.png', 'iter_000002.png']
    assert open(pics / 'iter_000002.png', 'rb').read() == open(
        png, 'rb').read()
    assert f'while training : {pics}/' in out.stdout
    assert f'k-NN accuracy  : {tmp_path / "knn_eval.jsonl"}' in out.stdout
    assert 'iter    2: top-1' in out.stdout
    assert 'Iter(train) [2/2]' in out.stdout + out.stderr

"""tools/analysis_tools/benchmark_pretrain.py (over mmum.utils.benchmark) in
tiny mode: the tables have their rows and columns, the ratios are the measured
values' ratios, rows are built as the Runner builds them (normalised inputs),
the CPU memory reading does not drift across rows of one process, and the
smoke mode's output is clean and narrow."""
import importlib.util
import re
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def bench():
    spec = importlib.util.spec_from_file_location(
        'benchmark_pretrain',
        osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_pretrain.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def run(bench):
    """One tiny run of a pair of each kind (ViTFreeze at one point)."""
    threads = torch.get_num_threads()
    import io
    from contextlib import redirect_stdout
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            results = bench.main([
                '--tiny', '--batch-size', '1', '--warmup', '0', '--steps',
                '2', '--methods', 'simmim_swin_t', 'ummae_swin_t',
                'simmim_pvt_s', 'ummae_pvt_s', 'simmim_swin_b',
                'greenmim_swin_b', 'localmim_vit_b', 'vitfreeze_vit_b@0.8'
            ])
    finally:
        torch.set_num_threads(threads)
    return results, out.getvalue()


def tables(text):
    """The Markdown tables of ``text``: lists of rows of stripped cells."""
    out = []
    for ln in text.splitlines():
        if not ln.startswith('|'):
            continue
        cells = [c.strip() for c in ln.strip('|').split('|')]
        if cells[0] == 'method':
            out.append([cells])
        elif not ln.startswith('|-'):
            out[-1].append(cells)
    return out


def test_table_rows_and_columns(bench, run):
    results, text = run
    assert [r['name'] for r in results] == [
        'simmim_swin_t', 'ummae_swin_t', 'simmim_pvt_s', 'ummae_pvt_s',
        'simmim_swin_b', 'greenmim_swin_b', 'localmim_vit_b',
        'vitfreeze_vit_b@0.8'
    ]
    cost, ratios = tables(text)  # one mode: no table of modes
    assert cost[0] == [c[0] for c in bench.COST_COLUMNS]
    assert ratios[0] == [c[0] for c in bench.RATIO_COLUMNS]
    for col in ('step ms', 'optim ms', 'peak MiB', 'act MiB/img',
                'enc tok/img'):
        assert col in cost[0]
    for col in ('dec GF', 'act x', 'train GFLOP/img', 'time x', 'mem x',
                'FLOPs x', 'grp %'):
        assert col in ratios[0]
    for body in (cost[1:], ratios[1:]):
        assert len(body) == len(results)
        methods = [b[0] for b in body]
        assert methods[:6] == ['SimMIM', 'UM-MAE', 'SimMIM', 'UM-MAE',
                               'SimMIM', 'GreenMIM']
        assert methods[7] == 'ViTFreeze@0.8'
    assert {b[3] for b in cost[1:]} == {b[2] for b in ratios[1:]} == {'fp32'}
    assert 'ViTFreeze@0.8 ViT-B: 8 layers frozen, 2 decoders pruned' in text
    assert 'peak MiB:' in text and 'device:' in text
    for r in results:
        assert len(r['times']) == 2 and r['time_ms'] > 0
        assert r['mem_mib'] > 0 and r['train_gflops'] > 0
        assert 0 < r['act_mib'] < r['mem_mib']
        assert 0 < r['optim_ms'] < r['time_ms']
        if r['family'] == 'localmim':  # decoders on several blocks
            assert r['enc_gflops'] is None and r['dec_gflops'] is None
        else:
            assert 0 < r['enc_gflops'] < r['train_gflops']
        if r['family'] in ('ummae', 'greenmim'):  # MAE decoders
            assert 0 < r['dec_act_mib'] < r['act_mib']
            assert 0 < r['dec_gflops'] <= (r['train_gflops'] -
                                           r['enc_gflops']) * (1 + 1e-9)


def test_ratios_are_the_measured_ratios(run):
    results, text = run
    by = {r['name']: r for r in results}
    for name, ref in [('ummae_swin_t', 'simmim_swin_t'),
                      ('ummae_pvt_s', 'simmim_pvt_s'),
                      ('greenmim_swin_b', 'simmim_swin_b'),
                      ('vitfreeze_vit_b@0.8', 'localmim_vit_b')]:
        r, b = by[name], by[ref]
        assert r['time_x'] == pytest.approx(b['time_ms'] / r['time_ms'])
        assert r['mem_x'] == pytest.approx(b['mem_mib'] / r['mem_mib'])
        assert r['act_x'] == pytest.approx(b['act_mib'] / r['act_mib'])
        assert r['flops_x'] == pytest.approx(b['train_gflops'] /
                                             r['train_gflops'])
        if b['enc_gflops'] is not None:
            assert r['enc_flops_x'] == pytest.approx(b['enc_gflops'] /
                                                     r['enc_gflops'])
        assert f"{r['time_x']:.2f}" in text
    for name in ('simmim_swin_t', 'simmim_pvt_s', 'simmim_swin_b',
                 'localmim_vit_b'):
        assert by[name]['time_x'] is None


def test_measured_quantities(run):
    results, text = run
    by = {r['name']: r for r in results}
    # tokens entering the first block: UM-MAE's compact quarter, GreenMIM's
    # visible units (int(49 * 0.25) = 12 units of 8x8 stage-1 tokens)
    assert by['simmim_swin_t']['tokens'] == 64 * 64
    assert by['ummae_swin_t']['tokens'] == 32 * 32
    assert by['ummae_pvt_s']['tokens'] == 32 * 32
    assert by['simmim_swin_b']['tokens'] == 56 * 56
    assert by['greenmim_swin_b']['tokens'] == 12 * 64
    assert by['localmim_vit_b']['tokens'] == 1 + 49
    # fewer tokens, fewer encoder FLOPs; freezing cuts the backward
    assert by['ummae_swin_t']['enc_flops_x'] > 3
    assert by['greenmim_swin_b']['enc_flops_x'] > 3
    assert by['vitfreeze_vit_b@0.8']['flops_x'] > 1
    assert by['vitfreeze_vit_b@0.8']['frozen'].startswith('8 layers')
    g = by['greenmim_swin_b']
    assert 0 < g['grouping_pct'] < 100
    assert by['simmim_swin_b']['grouping_pct'] is None
    # tiny archs: targets are not judged (the ratios mean nothing there)
    assert by['ummae_swin_t']['verdict'] == 'not judged'
    assert g['verdict'] == 'not judged'
    assert not re.search(r'MISSED|\bmet\b', text)


def test_targets_verdicts(bench):
    rows = [
        dict(name='a', ref=None, targets={}, time_ms=10., mem_mib=30.,
             act_mib=6., train_gflops=8., enc_gflops=4., grouping_pct=None),
        dict(name='b', ref='a', targets=dict(time=2.5, mem=3.0,
                                              enc_flops=3.8),
             time_ms=4., mem_mib=15., act_mib=2., train_gflops=2.,
             enc_gflops=1.,
             grouping_pct=None),
    ]
    bench.add_ratios(rows)
    assert rows[1]['ref_label'] == 'a'
    assert rows[1]['time_x'] == 2.5 and rows[1]['mem_x'] == 2.0
    assert rows[1]['act_x'] == 3.0
    assert rows[1]['enc_flops_x'] == 4.0 and rows[1]['flops_x'] == 4.0
    assert rows[1]['verdict'] == ('time>=2.5x met, act>=3x met, '
                                  'encF>=3.8x met')
    rows[1]['time_ms'] = 5.
    bench.add_ratios(rows)
    assert rows[1]['verdict'].startswith('time>=2.5x MISSED')
    # a missed target gets its "where the time goes" line
    rows[1].update(method='M', arch='A', ref_label='R', dec_gflops=1.,
                   optim_ms=1., dec_act_mib=0.5)
    lines = bench.where_time_goes(rows)
    assert len(lines) == 2 and lines[1].startswith('M A misses a target')
    assert 'the decoder is 50% of its training FLOPs' in lines[1]
    assert '4.00x fewer FLOPs than R while time is 2.00x' in lines[1]
    assert 'optimizer step is 20% of its step time' in lines[1]
    assert 'decoder also holds 0.5 of its 2 MiB/img' in lines[1]


def test_bad_method_is_a_clear_error(bench):
    with pytest.raises(ValueError, match='unknown rows'):
        bench.main(['--methods', 'mae_swin_t'])


def test_with_cp_rows(bench):
    """``--with-cp``: a row per pre-training method, with_cp changes neither
    the loss nor the gradients and saves activations."""
    threads = torch.get_num_threads()
    import io
    from contextlib import redirect_stdout
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            results = bench.main(['--with-cp', '--tiny', '--batch-size', '1',
                                  '--warmup', '0', '--steps', '1'])
    finally:
        torch.set_num_threads(threads)
    assert [r['name'] for r in results] == list(bench.WITH_CP_DEFAULT)
    for r in results:
        assert r['loss_diff'] <= 1e-6 and r['grad_diff'] <= 1e-6, r
        assert 0 < r['act_mib_cp'] < r['act_mib'], r
        assert r['act_saving'] == pytest.approx(
            1 - r['act_mib_cp'] / r['act_mib'])
    (table, ) = tables(out.getvalue())
    assert table[0] == [c[0] for c in bench.CP_COLUMNS]
    assert len(table) == 1 + len(results)  # header + rows
    with pytest.raises(ValueError, match='--with-cp rows are'):
        bench.main(['--with-cp', '--methods', 'simmim_swin_t'])


def test_positions_cost_lines(bench):
    """UM-MAE's original positions against its compact-positions row."""
    assert 'ummae_swin_t_compact' in bench.PAIRS[0]
    assert bench.ROWS['ummae_pvt_s_compact']['positions'] == 'compact'
    rows = [
        dict(name='ummae_swin_t', method='UM-MAE', arch='Swin-T',
             time_ms=104., act_mib=54.5),
        dict(name='ummae_swin_t_compact', positions='compact',
             time_ms=100., act_mib=50.),
    ]
    lines = bench.positions_cost(rows)
    assert lines[1] == ('UM-MAE Swin-T: original positions vs compact: '
                        'step time +4.0% (<= 5% met), saved act. +9.0% '
                        '(<= 10% met)')
    rows[0]['time_ms'] = 110.
    assert 'step time +10.0% (<= 5% MISSED)' in bench.positions_cost(rows)[1]
    assert bench.positions_cost(rows[:1]) == []


def test_page_faults_line(run):
    """Under the table: each row's minor page faults per timed step."""
    results, text = run
    assert all(r['faults'] >= 0 for r in results)
    line = next(ln for ln in text.splitlines()
                if ln.startswith('minor page faults per step'))
    assert "glibc's default malloc" in line
    assert f"UM-MAE Swin-T {results[1]['faults']:.0f}" in line


@pytest.mark.skipif(not osp.exists('/proc/self/maps'), reason='needs Linux')
def test_keep_freed_memory_runs_in_its_own_process_tiny_output_clean():
    """--keep-freed-memory changes malloc for the whole process, so it runs
    in a subprocess here; the line under the table says it was on. The smoke
    mode's whole output (stdout and stderr) has no profiler lines, no
    verdicts and tables at most 120 characters wide."""
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable,
         osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_pretrain.py'),
         '--tiny', '--batch-size', '1', '--warmup', '0', '--steps', '1',
         '--keep-freed-memory', '--methods', 'simmim_swin_t',
         'ummae_swin_t'], capture_output=True, text=True, cwd=ROOT,
        timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ('minor page faults per step (median; freed memory kept in the '
            'process (--keep-freed-memory)): SimMIM Swin-T') in out.stdout
    both = out.stdout + out.stderr
    for noise in ('STAGE:', 'USDT:', 'gpuGetDeviceCount', 'ActivityProfiler',
                  'MISSED', 'pkg_resources'):
        assert noise not in both, both
    table_lines = [ln for ln in out.stdout.splitlines() if ln.startswith('|')]
    assert len(table_lines) == 2 * 4  # two tables: header, rule, 2 rows
    assert max(map(len, table_lines)) <= 120


def test_memory_reading_holds_across_rows(bench):
    """The CPU memory of a step is read against the live bytes at its
    start: the same row measured again in the same process, after other
    rows' models were built and kept alive, reads the same."""
    from mmum.utils import benchmark as bm
    opts = bm.options(tiny=True, batch_size=1, warmup=0, steps=1)
    first = bm.run_pair(['simmim_swin_t'], opts)[0]
    others = [bm.build_row(n, opts) for n in ('ummae_swin_t', 'simmim_pvt_s')]
    for row in others:  # their steps leave more live tensors behind
        bm.train_step(row, bm.make_batch(row))
    again = bm.run_pair(['simmim_swin_t'], opts)[0]
    assert again['act_mib'] == pytest.approx(first['act_mib'], rel=0.02)
    assert again['mem_mib'] == pytest.approx(first['mem_mib'], rel=0.02)
    del others


@pytest.mark.parametrize('name', ['greenmim_swin_b', 'greenmim_twins_l',
                                  'simmim_swin_b', 'localmim_vit_b'])
def test_rows_see_normalised_inputs(name):
    """Rows are built as the Runner builds them: the configs' top-level
    data_preprocessor (mean/std, BGR -> RGB) is merged into the model, so
    the encoder sees normalised images, not 0-255 pixels."""
    from mmum.utils import benchmark as bm
    row = bm.build_row(name, bm.options(tiny=True, batch_size=2))
    pre = row['model'].data_preprocessor
    assert pre.mean.flatten().tolist() == pytest.approx(
        [123.675, 116.28, 103.53])
    seen = []
    row['model'].backbone.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach()) if not seen else None)
    data = bm.make_batch(row)
    raw = data['inputs'][0].float() if isinstance(data, dict) else None
    bm.train_step(row, data)
    x = seen[0]
    # uniform 0-255 pixels: normalised mean ~0.2, std ~1.3 (raw: 127, 74)
    assert abs(float(x.mean())) < 0.5 and 1 < float(x.std()) < 1.6
    if raw is not None:  # and BGR -> RGB: channel 0 is the blue one
        expect = (raw[2] - 123.675) / 58.395
        assert torch.allclose(x[0, 0], expect, atol=1e-4)


def test_amp_mode_rows(bench):
    """--amp both: every row in fp32 and in AMP (bf16 autocast on CPU) on
    one model; the table of modes gives each mode's step time."""
    from mmum.utils import benchmark as bm
    opts = bm.options(tiny=True, batch_size=1, warmup=0, steps=1)
    base = bm.build_row('ummae_swin_t', opts)
    amp = bm.with_mode(base, opts, amp=True)
    assert amp['model'] is base['model']
    assert amp['optim'].optimizer is base['optim'].optimizer
    dtypes = []
    linear = next(m for m in base['model'].modules()
                  if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    for row in (base, amp):
        loss = bm.train_step(row, bm.make_batch(row))
        assert torch.isfinite(loss)
    assert dtypes == [torch.float32, torch.bfloat16]
    results = bench.main(['--tiny', '--batch-size', '1', '--warmup', '0',
                          '--steps', '1', '--amp', 'both', '--methods',
                          'simmim_swin_t', 'ummae_swin_t'])
    assert [(r['name'], r['mode']) for r in results] == [
        ('simmim_swin_t', 'fp32'), ('simmim_swin_t', 'bf16'),
        ('ummae_swin_t', 'fp32'), ('ummae_swin_t', 'bf16')]
    by = {(r['name'], r['mode']): r for r in results}
    r, ref = by['ummae_swin_t', 'bf16'], by['simmim_swin_t', 'bf16']
    assert r['time_x'] == pytest.approx(ref['time_ms'] / r['time_ms'])
    lines = bench.mode_table(results)
    assert lines[0].split('|')[3:6] == [' fp32 ms ', ' bf16 ms ', ' bf16 x ']


@pytest.mark.slow
def test_compiled_mode_equals_eager():
    """--compile: the row's forward and loss under torch.compile (optimizer
    outside) give the eager loss and gradients on the same weights and batch
    (minutes: inductor compiles on the CPU)."""
    from mmum.utils import benchmark as bm
    opts = bm.options(tiny=True, batch_size=1)
    eager = bm.build_row('simmim_swin_t', opts)
    compiled = bm.with_mode(eager, opts, compiled=True)
    data = bm.make_batch(eager)
    d = bm.compare(bm.loss_and_grads(eager, data, 0),
                   bm.loss_and_grads(compiled, data, 0), 'compile')
    assert d['loss_diff'] <= 1e-5 * abs(d['loss'])
    assert d['grad_diff'] <= 1e-4 * d['grad_max']
    bm.train_step(compiled, bm.make_batch(compiled))  # and the step runs

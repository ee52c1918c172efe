"""torch.compile of GreenMIM's forward + loss: one graph for every mask.

The plan (data preprocessor) marks the group count of every grouping
unbacked and the group size dynamic (``mark_groups_dynamic``), so new masks,
which change how many groups of which size each stage needs (a group count
of 1 included), reuse the first graph; everything else in the step has the
same shape for every mask of a given ratio. Compiled (inductor) losses and
gradients equal eager ones on the same plan to float rounding. Slow: one
compile of forward and backward takes minutes on a busy 2-core machine."""
import pytest
import torch
from mmpretrain.structures import DataSample
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._pytree import tree_flatten

from mmum.models.layers.group_window_attention import GroupLayout
from mmum.registry import MODELS
from test_green_mim_sync import _swin, _twins

pytestmark = pytest.mark.usefixtures('one_thread')


def _group_shapes(plan):
    return tuple(
        tuple(x.slots.shape[:2]) for x in tree_flatten(
            plan, is_leaf=lambda x: isinstance(x, GroupLayout))[0]
        if isinstance(x, GroupLayout))


@pytest.mark.slow
@pytest.mark.parametrize('build, one_group', [(_swin, True),
                                              (_twins, False)],
                         ids=['swin', 'twins'])
def test_compiled_step_one_graph_for_every_mask(build, one_group):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MODELS.build(build())
    model.init_weights()
    model.train()
    samples = [DataSample() for _ in range(2)]
    data = dict(inputs=torch.randint(0, 256, (2, 3, 128, 128),
                                     dtype=torch.uint8),
                data_samples=samples)

    def step(inputs, plan):
        return model(inputs, samples, mode='loss', plan=plan)['loss']

    params = [p for p in model.parameters() if p.requires_grad]
    counter = CompileCounterWithBackend('inductor')
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    shapes = []
    for i in range(6):
        batch = model.data_preprocessor(data, True)
        shapes.append(_group_shapes(batch['plan']))
        loss = compiled(batch['inputs'], batch['plan'])
        eager = step(batch['inputs'], batch['plan'])
        torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
        if i == 0:  # gradients too
            model.zero_grad()
            loss.backward()
            got = [p.grad.clone() for p in params]
            model.zero_grad()
            eager.backward()
            for g, p in zip(got, params):
                torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
        else:
            loss.backward()
    # the masks changed the groupings (for Swin, a stage with several
    # windows also drew a single group, the 0/1 case that recompiled
    # before the group count was unbacked); fullgraph=True: no graph
    # break; one graph served every mask
    assert len(set(shapes)) > 1, shapes
    assert one_group == any(s[0] == 1 for step_shapes in shapes
                            for s in step_shapes[:-1]), shapes
    assert counter.frame_count == 1

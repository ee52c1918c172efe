from .cpb_window_attention import (CPBShiftWindowMSA, CPBWindowMSA,
                                   LogCPB)

__all__ = ['LogCPB', 'CPBWindowMSA', 'CPBShiftWindowMSA']
from .group_window_attention import GroupWindowAttention  # noqa: E402
__all__ += ['GroupWindowAttention']
from .conv_patch_merging import ConvPatchMerging, merge_2x2  # noqa: E402
__all__ += ['ConvPatchMerging', 'merge_2x2']
from .query_subset import block_at, block_shared_rows, blocks_at  # noqa: E402,E501
__all__ += ['block_at', 'block_shared_rows', 'blocks_at']
from .released_init import init_as_released  # noqa: E402
__all__ += ['init_as_released']
from .sparse_conv import (build_neighbour_index, build_strided_index,  # noqa
                          sparse_strided_conv, submanifold_dwconv3x3)
__all__ += ['build_neighbour_index', 'build_strided_index',
            'sparse_strided_conv', 'submanifold_dwconv3x3']
from .linear_xavier_init import LinearXavierInit  # noqa: E402
__all__ += ['LinearXavierInit']
from .green_twins_init import GreenMIMTwinsInit  # noqa: E402
__all__ += ['GreenMIMTwinsInit']
from .precision import autocast_off  # noqa: E402
__all__ += ['autocast_off']
from .drop_rates import float_drop_rates  # noqa: E402
__all__ += ['float_drop_rates']

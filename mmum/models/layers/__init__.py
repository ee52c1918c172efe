from .cpb_window_attention import (CPBShiftWindowMSA, CPBWindowMSA,
                                   LogCPB)

__all__ = ['LogCPB', 'CPBWindowMSA', 'CPBShiftWindowMSA']
from .group_window_attention import GroupWindowAttention  # noqa: E402
from .optimal_grouping import optimal_grouping  # noqa: E402
__all__ += ['GroupWindowAttention', 'optimal_grouping']
from .conv_patch_merging import ConvPatchMerging  # noqa: E402
__all__ += ['ConvPatchMerging']

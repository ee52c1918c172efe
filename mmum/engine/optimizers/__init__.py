__all__ = []
from .merged_groups import (MergedGroupsOptimWrapperConstructor,  # noqa: E402
                            merge_param_groups)
__all__ += ['MergedGroupsOptimWrapperConstructor', 'merge_param_groups']
from .cpu_amp import CPUAmpOptimWrapper, native_bf16  # noqa: E402
__all__ += ['CPUAmpOptimWrapper', 'native_bf16']

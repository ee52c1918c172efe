__all__ = []
from .merged_groups import (MergedGroupsOptimWrapperConstructor,  # noqa: E402
                            merge_param_groups)
__all__ += ['MergedGroupsOptimWrapperConstructor', 'merge_param_groups']

"""Neural-network building blocks: Module, ParamStore and its path builder, layers, activations.

    from deers.nn import ParamStore, Module, Linear, Embedding, RMSNorm, ReLU, Sequential
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 10))     # PyTorch style
    store = ParamStore(device="cpu"); vb = store.root()
    fc = Linear(768, 3072, bias=False, vb=vb.pp("blocks").pp(0).pp("mlp").pp("fc"), init=Normal(0.0, 0.02))
"""
from .activations import GELU, Dropout, Flatten, Identity, ReLU, SiLU, Softplus, dropout, gelu, silu, softplus
from .containers import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from ..hooks import RemovableHandle
from .layers import Embedding, LayerNorm, Linear, RMSNorm, layer_norm
from .module import ContainerError, LoadResult, Module, StateDictError
from .params import Constant, Init, Normal, ParamPath, ParamStore, Uniform, kaiming_uniform

__all__ = [
    "Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Sequential", "StateDictError",
    "ContainerError", "LoadResult", "RemovableHandle",
    "ParamStore", "ParamPath", "Init", "Normal", "Uniform", "Constant", "kaiming_uniform",
    "Linear", "Embedding", "RMSNorm", "LayerNorm",
    "ReLU", "GELU", "SiLU", "Softplus", "Dropout", "Identity", "Flatten", "gelu", "silu", "softplus", "dropout",
    "layer_norm",
]

"""Neural-network building blocks: Module, ParamStore and its path builder, layers, activations.

    from deers.nn import ParamStore, Module, Linear, Embedding, RMSNorm, ReLU, Sequential
    cnn = Sequential(Conv2d(1, 32, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(32 * 13 * 13, 10))
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 10))     # PyTorch style
    store = ParamStore(device="cpu"); vb = store.root()
    fc = Linear(768, 3072, bias=False, vb=vb.pp("blocks").pp(0).pp("mlp").pp("fc"), init=Normal(0.0, 0.02))
"""
from ..hooks import RemovableHandle
from ..ops.conv import conv1d, conv2d
from ..ops.pooling import avg_pool2d, max_pool2d
from .activations import GELU, Dropout, Flatten, Identity, ReLU, SiLU, Softplus, dropout, gelu, silu, softplus
from .batchnorm import BatchNorm1d, BatchNorm2d, batch_norm
from .containers import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from .conv import Conv1d, Conv2d
from .layers import Embedding, LayerNorm, Linear, RMSNorm, layer_norm
from .module import ContainerError, LoadResult, Module, StateDictError
from .pooling import AvgPool2d, MaxPool2d
from .params import Constant, Init, Normal, ParamPath, ParamStore, Uniform, kaiming_uniform

__all__ = [
    "Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Sequential", "StateDictError",
    "ContainerError", "LoadResult", "RemovableHandle",
    "ParamStore", "ParamPath", "Init", "Normal", "Uniform", "Constant", "kaiming_uniform",
    "Linear", "Embedding", "RMSNorm", "LayerNorm",
    "Conv1d", "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
    "conv1d", "conv2d", "max_pool2d", "avg_pool2d", "batch_norm",
    "ReLU", "GELU", "SiLU", "Softplus", "Dropout", "Identity", "Flatten", "gelu", "silu", "softplus", "dropout",
    "layer_norm",
]

"""Type stub for sparsekit's compiled module (private: use the sparsekit package)."""

from typing import Optional, Union

import numpy as np
import numpy.typing as npt

_Index = Union[npt.NDArray[np.uint16], npt.NDArray[np.int32]]

def simd() -> str: ...
def simd_available() -> list[str]: ...
def set_simd(name: str) -> None: ...
def openmp() -> bool: ...
def openmp_max_threads() -> int: ...
def validate_bsr(
    rows: int, cols: int, br: int, bc: int, indptr: npt.NDArray[np.int64], indices: _Index,
    values: npt.NDArray[np.float32],
) -> None: ...
def spmm(
    rows: int, cols: int, br: int, bc: int, indptr: npt.NDArray[np.int64], indices: _Index,
    values: npt.NDArray[np.float32], x: npt.NDArray[np.float32],
    bias: Optional[npt.NDArray[np.float32]], activation: int, y: npt.NDArray[np.float32],
    matmul: bool, threads: int,
) -> None: ...

// The one TORCH_LIBRARY(hpcyuan, m) block: the schemas of every hpcyuan op (extension-cpp layout).
// CPU kernels live in kernels/<op>.cpp, CUDA kernels in kernels/cuda/<op>.cu, autograd and fake
// (meta) registrations in Python under hpcyuan/ops/. Signatures match hpcyuan/ops/reference.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import hpcyuan._C` loads this .so, which runs the registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hpcyuan, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // grad_x (x's dtype) and grad_weight (weight's dtype); rstd is recomputed, not saved
  m.def("rms_norm_backward(Tensor grad_out, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
}

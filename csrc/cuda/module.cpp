// The CUDA extension module boltzgrad._C_cuda: importing it registers the CUDA
// implementations (TORCH_LIBRARY_IMPL(boltzgrad, CUDA, ...)) of the ops that boltzgrad._C defines.
#include <Python.h>

extern "C" PyObject* PyInit__C_cuda(void) {
    static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C_cuda", "boltzgrad CUDA kernels", -1, nullptr};
    return PyModule_Create(&def);
}

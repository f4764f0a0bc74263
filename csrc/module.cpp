// The CPU extension module boltzgrad._C. Importing it registers the ops of every
// csrc/*.cpp file (each adds its schemas with TORCH_LIBRARY_FRAGMENT).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(boltzgrad, m) {}

extern "C" PyObject* PyInit__C(void) {
    static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "boltzgrad CPU kernels", -1, nullptr};
    return PyModule_Create(&def);
}

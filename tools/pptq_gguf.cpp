// pptq-gguf: requantize the linear layers of a GGUF model with OPTQ into llama.cpp's block formats, from
// per-tensor Hessians or calibration inputs. See `pptq-gguf requantize --help` and tools/gguf_requantize.hpp,
// which holds everything but main().
#include "gguf_requantize.hpp"

int main(int argc, char** argv) { return pptq_gguf::cli_main(argc, argv); }

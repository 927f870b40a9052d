// pptq-quantize: quantize one layer's weights (W.npy) with RTN, OPTQ, stochastic OPTQ, Qronos or GPFQ,
// write the quantized weights, the integer codes and a JSON report. See `pptq-quantize --help` and
// tools/quantize_cli.hpp, which holds everything but main().
#include "quantize_cli.hpp"

int main(int argc, char** argv) { return pptq_cli::cli_main(argc, argv); }

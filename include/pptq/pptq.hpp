// pptq — provable post-training quantization: OPTQ (GPTQ), stochastic OPTQ, Qronos, GPFQ and RTN on one
// sweep engine, with the error bounds of their theory. Umbrella header of the core (Eigen only);
// file I/O stays opt-in under pptq/io/.
#pragma once

#include "common.hpp"
#include "grid.hpp"
#include "gram.hpp"
#include "result.hpp"
#include "optq.hpp"
#include "qronos.hpp"
#include "gpfq.hpp"
#include "bounds.hpp"
#include "lambda_sweep.hpp"
#include "damp_choice.hpp"
#include "rtn.hpp"

// Host stand-in for <cuda_fp16.h> in the GPU kernel emulation (tools/gpu_emu): storage only.
#pragma once
#include <cstdint>
struct __half { uint16_t bits; };

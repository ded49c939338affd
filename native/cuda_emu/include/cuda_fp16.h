// Stands in for the CUDA toolkit header in the emulator build (../ncp_cuda_emu.h).
#pragma once
#include "cuda_emu/ncp_cuda_emu.h"

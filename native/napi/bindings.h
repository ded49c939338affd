// Each binding file registers its functions on the addon's exports.
#pragma once
#include <napi.h>

namespace ncp::napi {

void register_info(Napi::Env env, Napi::Object exports);   // info, setThreads
void register_ops(Napi::Env env, Napi::Object exports);    // runOp
void register_bench(Napi::Env env, Napi::Object exports);  // benchGemm, benchConv2d
void register_dtype(Napi::Env env, Napi::Object exports);  // toFloat32, fromFloat32
void register_cuda(Napi::Env env, Napi::Object exports);   // cudaStatus, cudaParity
void register_unet(Napi::Env env, Napi::Object exports);   // loadUNet, unetForwardFile
void register_encoders(Napi::Env env, Napi::Object exports);  // loadTextEncoder, loadVae, componentForwardFile
void register_train(Napi::Env env, Napi::Object exports);     // createTrainer, gradFile, benchStep

}  // namespace ncp::napi

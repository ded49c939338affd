# Fallback build with node-gyp (CPU only, our own GEMM kernel), for machines without cmake. The main build is
# CMakeLists.txt through cmake-js; both compile the same sources.
{
  "targets": [
    {
      "target_name": "ncp_native",
      "sources": [
        "<!@(node -e \"const fs=require('fs');for(const d of ['core','cpu','model','train','napi']){const p='native/'+d;if(fs.existsSync(p))for(const f of fs.readdirSync(p).sort())if(f.endsWith('.cpp'))console.log(p+'/'+f)}\")"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NAPI_CPP_EXCEPTIONS",
        "NCP_VERSION=\"<!(node -p \"require('./package.json').version\")\""
      ],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++14", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-march=x86-64-v3", "-fno-math-errno"],
      "ldflags": ["-pthread"]
    }
  ]
}

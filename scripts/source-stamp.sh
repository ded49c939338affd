#!/usr/bin/env bash
# A hash of the native sources (native/ and CMakeLists.txt, by content; no git needed): gpu-prebuild.sh stamps the
# binaries it builds with it and gpu-native.sh uses them only where it matches.
set -euo pipefail
cd "$(dirname "$0")/.."
find native CMakeLists.txt -type f | LC_ALL=C sort | xargs md5sum | md5sum | cut -c1-16

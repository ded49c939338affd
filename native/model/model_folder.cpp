#include "model/model_folder.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "model/json.h"
#include "model/safetensors.h"

namespace ncp::model {

namespace {

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("NCP_EIO", "cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error("NCP_EIO", "cannot read " + path + ": " + std::strerror(errno));
  return text.str();
}

// The shard files of an index, each checked to hold the tensors the index assigns to it.
std::vector<std::string> read_index(const std::string& dir, const std::string& index_path) {
  const json::Value index = json::parse(read_text(index_path), "NCP_EFORMAT", index_path);
  const json::Value* map = index.is_object() ? index.find("weight_map") : nullptr;
  if (!map || !map->is_object()) throw Error("NCP_EFORMAT", index_path + ": no \"weight_map\" object");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& m : map->members()) {
    const std::string shard = m.value.is_string() ? m.value.as_string() : "";
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos)
      throw Error("NCP_EFORMAT", index_path + ": weight_map entry " + json::quote(m.key) + " = " +
                                     json::to_string(m.value) + " is not a shard file name");
    by_shard[shard].push_back(m.key);
  }
  if (by_shard.empty()) throw Error("NCP_EFORMAT", index_path + ": weight_map is empty");
  std::vector<std::string> files;
  std::string missing;
  size_t n_missing = 0;
  for (const auto& kv : by_shard) {
    files.push_back(dir + "/" + kv.first);
    const SafetensorsFile shard = SafetensorsFile::open(files.back());
    for (const auto& name : kv.second) {
      if (shard.find(name)) continue;
      ++n_missing;
      missing += "\n" + name + " (in " + kv.first + ")";
    }
  }
  if (n_missing)
    throw Error("NCP_EMISSING", index_path + ": " + std::to_string(n_missing) +
                                    " tensors are not in the shards the index names:" + missing);
  return files;
}

}  // namespace

ComponentFiles resolve_component_files(const std::string& model_dir, const std::string& component,
                                       const std::string& weight_stem, const std::string& variant) {
  ComponentFiles out;
  out.dir = model_dir + "/" + component;
  std::vector<std::string> variants = {variant};
  if (variant.empty()) variants.push_back("fp16");
  std::vector<std::string> tried;
  for (const auto& v : variants) {
    const std::string file = weight_stem + (v.empty() ? "" : "." + v) + ".safetensors";
    for (const std::string& name : {file, file + ".index.json"}) {
      const std::string path = out.dir + "/" + name;
      tried.push_back(name);
      if (!is_file(path)) continue;
      if (name == file) {
        out.weight_files = {path};
      } else {
        out.index_path = path;
        out.weight_files = read_index(out.dir, path);
      }
      out.config_path = out.dir + "/config.json";
      out.config_text = read_text(out.config_path);
      return out;
    }
  }
  std::string list;
  for (const auto& t : tried) list += (list.empty() ? "" : ", ") + t;
  std::string hint;
  if (is_file(out.dir + "/" + weight_stem + ".bin"))
    hint = " (" + weight_stem + ".bin is there: PyTorch pickles are not read, convert it to safetensors)";
  throw Error("NCP_EIO", "no " + component + " weights in " + out.dir + ": tried " + list + hint);
}

ComponentFiles resolve_unet_files(const std::string& model_dir, const std::string& variant) {
  return resolve_component_files(model_dir, "unet", "diffusion_pytorch_model", variant);
}

}  // namespace ncp::model

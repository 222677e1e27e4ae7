// run_encoder: runs an ONNX model that calls crosslayer's custom ops (libcrosslayer_ortops) through onnxruntime's C
// API, with no Python in the process.
//
//   run_encoder MODEL.onnx OPS_LIBRARY OUT_DIR INPUT...      INPUT = NAME=TYPE:D0xD1x...:FILE
//
// OPS_LIBRARY "" registers no custom-op library (a model of standard operators).
//
// TYPE is float32, uint8, int64 or uint64; FILE holds the raw little-endian values in C order (a 0 dimension is
// allowed; use "-" as the shape of a scalar). Every output is written to OUT_DIR/NAME.bin (raw values) and described
// on stdout as "NAME TYPE D0xD1x...". The session uses onnxruntime's default intra-op threads (one per core),
// which the custom ops run on. Exits 1 with a message on bad arguments or any onnxruntime error.
#include <onnxruntime_c_api.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

const OrtApi* ort = nullptr;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(OrtStatus* status) {
  if (status != nullptr) {
    const std::string message = ort->GetErrorMessage(status);
    ort->ReleaseStatus(status);
    throw Error("onnxruntime: " + message);
  }
}

// The onnxruntime objects this program owns, released in reverse order of creation.
template <typename T, void (*Release)(T*)>
struct Owned {
  T* pointer = nullptr;
  ~Owned() {
    if (pointer) Release(pointer);
  }
};
void release_env(OrtEnv* p) { ort->ReleaseEnv(p); }
void release_options(OrtSessionOptions* p) { ort->ReleaseSessionOptions(p); }
void release_session(OrtSession* p) { ort->ReleaseSession(p); }
void release_memory_info(OrtMemoryInfo* p) { ort->ReleaseMemoryInfo(p); }
void release_value(OrtValue* p) { ort->ReleaseValue(p); }

struct ElementType {
  const char* name;
  ONNXTensorElementDataType type;
  std::size_t size;
};
const ElementType kTypes[] = {
    {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4},
    {"uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1},
    {"int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8},
    {"uint64", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, 8},
};

const ElementType& type_named(const std::string& name) {
  for (const ElementType& t : kTypes)
    if (name == t.name) return t;
  throw Error("input type '" + name + "': expected float32, uint8, int64 or uint64");
}

const ElementType& type_of(ONNXTensorElementDataType type) {
  for (const ElementType& t : kTypes)
    if (type == t.type) return t;
  throw Error("an output has an element type this runner does not write (ONNX type " + std::to_string(type) + ")");
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  if (shape.empty()) return "-";
  std::string text;
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? "x" : "") + std::to_string(shape[i]);
  return text;
}

struct Input {
  std::string name;
  const ElementType* type;
  std::vector<std::int64_t> shape;
  std::vector<char> data;
};

// NAME=TYPE:D0xD1x...:FILE
Input parse_input(const std::string& spec) {
  const std::size_t eq = spec.find('='), colon1 = spec.find(':', eq), colon2 = spec.find(':', colon1 + 1);
  if (eq == std::string::npos || colon1 == std::string::npos || colon2 == std::string::npos)
    throw Error("input '" + spec + "': expected NAME=TYPE:D0xD1x...:FILE");
  Input input;
  input.name = spec.substr(0, eq);
  input.type = &type_named(spec.substr(eq + 1, colon1 - eq - 1));
  const std::string dims = spec.substr(colon1 + 1, colon2 - colon1 - 1), path = spec.substr(colon2 + 1);
  std::int64_t count = 1;
  if (dims != "-") {
    std::stringstream stream(dims);
    std::string part;
    while (std::getline(stream, part, 'x')) {
      std::size_t used = 0;
      long long value = -1;
      try {
        value = std::stoll(part, &used);
      } catch (const std::exception&) {
      }
      if (used != part.size() || value < 0)
        throw Error("input '" + input.name + "': shape '" + dims + "' is not D0xD1x... of integers >= 0");
      input.shape.push_back(value);
      count *= value;
    }
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("input '" + input.name + "': cannot open " + path);
  input.data.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  if (input.data.size() != static_cast<std::size_t>(count) * input.type->size)
    throw Error("input '" + input.name + "': " + path + " has " + std::to_string(input.data.size()) + " bytes, shape " +
                dims + " of " + input.type->name + " needs " + std::to_string(count * input.type->size));
  if (input.data.empty()) input.data.resize(1);  // a valid address for an empty tensor
  return input;
}

int run(int argc, char** argv) {
  if (argc < 4) throw Error("usage: run_encoder MODEL.onnx OPS_LIBRARY OUT_DIR NAME=TYPE:D0xD1x...:FILE...");
  ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (ort == nullptr) throw Error("this onnxruntime does not offer C API version " + std::to_string(ORT_API_VERSION));
  std::vector<Input> inputs;
  for (int i = 4; i < argc; ++i) inputs.push_back(parse_input(argv[i]));

  Owned<OrtEnv, release_env> env;
  check(ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "run_encoder", &env.pointer));
  Owned<OrtSessionOptions, release_options> options;
  check(ort->CreateSessionOptions(&options.pointer));
  // "" means no custom ops: a model of standard operators needs no library (and onnxruntime would look for
  // RegisterCustomOps in this program itself)
  if (argv[2][0] != '\0') check(ort->RegisterCustomOpsLibrary_V2(options.pointer, argv[2]));
  Owned<OrtSession, release_session> session;
  check(ort->CreateSession(env.pointer, argv[1], options.pointer, &session.pointer));

  Owned<OrtMemoryInfo, release_memory_info> cpu;
  check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu.pointer));
  std::vector<std::unique_ptr<Owned<OrtValue, release_value>>> input_values;
  std::vector<const char*> input_names;
  std::vector<const OrtValue*> input_pointers;
  for (Input& input : inputs) {
    input_values.push_back(std::make_unique<Owned<OrtValue, release_value>>());
    check(ort->CreateTensorWithDataAsOrtValue(cpu.pointer, input.data.data(), input.data.size(), input.shape.data(),
                                              input.shape.size(), input.type->type, &input_values.back()->pointer));
    input_names.push_back(input.name.c_str());
    input_pointers.push_back(input_values.back()->pointer);
  }

  OrtAllocator* allocator = nullptr;
  check(ort->GetAllocatorWithDefaultOptions(&allocator));
  std::size_t output_count = 0;
  check(ort->SessionGetOutputCount(session.pointer, &output_count));
  std::vector<std::string> output_names;
  for (std::size_t i = 0; i < output_count; ++i) {
    char* name = nullptr;
    check(ort->SessionGetOutputName(session.pointer, i, allocator, &name));
    output_names.emplace_back(name);
    check(ort->AllocatorFree(allocator, name));
  }
  std::vector<const char*> output_name_pointers;
  for (const std::string& name : output_names) output_name_pointers.push_back(name.c_str());
  std::vector<OrtValue*> outputs(output_count, nullptr);
  check(ort->Run(session.pointer, nullptr, input_names.data(), input_pointers.data(), input_pointers.size(),
                 output_name_pointers.data(), output_count, outputs.data()));
  std::vector<std::unique_ptr<Owned<OrtValue, release_value>>> owned_outputs;
  for (OrtValue* value : outputs) {
    owned_outputs.push_back(std::make_unique<Owned<OrtValue, release_value>>());
    owned_outputs.back()->pointer = value;
  }

  for (std::size_t i = 0; i < output_count; ++i) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    check(ort->GetTensorTypeAndShape(outputs[i], &info));
    ONNXTensorElementDataType element = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    std::size_t rank = 0, count = 0;
    std::vector<std::int64_t> shape;
    OrtStatus* status = ort->GetTensorElementType(info, &element);
    if (!status) status = ort->GetDimensionsCount(info, &rank);
    if (!status) {
      shape.resize(rank);
      status = ort->GetDimensions(info, shape.data(), rank);
    }
    if (!status) status = ort->GetTensorShapeElementCount(info, &count);
    ort->ReleaseTensorTypeAndShapeInfo(info);
    check(status);
    const ElementType& type = type_of(element);
    void* data = nullptr;
    check(ort->GetTensorMutableData(outputs[i], &data));
    const std::string path = std::string(argv[3]) + "/" + output_names[i] + ".bin";
    std::ofstream file(path, std::ios::binary);
    file.write(static_cast<const char*>(data), static_cast<std::streamsize>(count * type.size));
    if (!file.flush()) throw Error("cannot write " + path);
    std::cout << output_names[i] << ' ' << type.name << ' ' << shape_text(shape) << '\n';
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {
    std::cerr << "run_encoder: " << error.what() << '\n';
    return 1;
  }
}

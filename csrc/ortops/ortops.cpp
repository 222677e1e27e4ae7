// libcrosslayer_ortops: onnxruntime custom ops of domain "ai.crosslayer" (opset 1) on the C API of libcrosslayer.
// Compiled against onnxruntime's C API header only; onnxruntime hands its API table to RegisterCustomOps, so the
// library never links onnxruntime and loads into any process that already has it (Python wheel, C/C++ program).
//
// Op contract (ONNX graphs built by crosslayer's exporter call exactly this):
//   PoolCodes(local, guidance, [pca_mean], [pca_projection]) -> (bits, channel_mean)
//   PoolFloat(local, guidance, [pca_mean], [pca_projection]) -> (representation)
//     local float32 (n, Dt_in, H, W), guidance float32 (n, Dk, H, W), pca_mean float32 (Dt_in), pca_projection
//     float32 (Dt_in, Dt); the last two optional (an empty input name = no PCA; both or neither).
//     bits uint64 (n, Dk, 2, ceil(Dt/64)) and channel_mean float32 (n, Dk) are exactly
//     crosslayer.pool(..., output="codes"); representation float32 (n, Dk*Dt) is crosslayer.pool(..., "float").
//
// Threads: the work runs on onnxruntime's intra-op thread pool (KernelContext_ParallelFor), so the session's
// intra_op_num_threads governs it. Each task pools one image single-threaded; a batch smaller than kMinTasks images
// also splits each image's guidance channels into blocks (per-channel results do not depend on the split; with PCA
// each block repeats its image's projection).
#include <onnxruntime_c_api.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "crosslayer/crosslayer.h"

namespace {

constexpr const char* kDomain = "ai.crosslayer";
constexpr int kOpsetVersion = 1;
// KernelContext_ParallelFor and the V2 kernel callbacks arrived in API 17 (onnxruntime 1.17).
constexpr int kMinimumApiVersion = 17;
constexpr std::int64_t kMinTasks = 16;

const OrtApi* ort = nullptr;

enum class Output { Codes, Float };

// An error on its way to onnxruntime as an OrtStatus (never an exception across its C ABI).
struct OpError {
  OrtErrorCode code;
  std::string message;
};

void check(OrtStatus* status) {
  if (status != nullptr) {
    std::string message = ort->GetErrorMessage(status);
    const OrtErrorCode code = ort->GetErrorCode(status);
    ort->ReleaseStatus(status);
    throw OpError{code, message};
  }
}

void require(bool ok, const std::string& message) {
  if (!ok) throw OpError{ORT_INVALID_ARGUMENT, message};
}

struct Tensor {
  const float* data = nullptr;
  std::vector<std::int64_t> shape;
};

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

// The float32 input at `index`; an absent optional input gives a Tensor with data == nullptr and no shape.
Tensor float_input(OrtKernelContext* context, std::size_t index, const char* name) {
  std::size_t count = 0;
  check(ort->KernelContext_GetInputCount(context, &count));
  Tensor tensor;
  if (index >= count) return tensor;
  const OrtValue* value = nullptr;
  check(ort->KernelContext_GetInput(context, index, &value));
  if (value == nullptr) return tensor;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(ort->GetTensorTypeAndShape(value, &info));
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::size_t rank = 0;
  OrtStatus* status = ort->GetTensorElementType(info, &type);
  if (status == nullptr) status = ort->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    tensor.shape.resize(rank);
    status = ort->GetDimensions(info, tensor.shape.data(), rank);
  }
  ort->ReleaseTensorTypeAndShapeInfo(info);
  check(status);
  require(type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, std::string(name) + ": expected a float32 tensor");
  void* data = nullptr;
  check(ort->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  tensor.data = static_cast<const float*>(data);
  return tensor;
}

template <typename T>
T* output(OrtKernelContext* context, std::size_t index, const std::vector<std::int64_t>& shape) {
  OrtValue* value = nullptr;
  check(ort->KernelContext_GetOutput(context, index, shape.data(), shape.size(), &value));
  void* data = nullptr;
  check(ort->GetTensorMutableData(value, &data));
  return static_cast<T*>(data);
}

// One ParallelFor task: image `image`, guidance channels [k_begin, k_begin + k_count).
struct Job {
  Output kind;
  const float *local, *guidance, *pca_mean, *pca_projection;
  std::int64_t dt_in, dk, positions, dt, blocks, block;
  float* representation;
  std::uint64_t* bits;
  float* channel_mean;
  // The first failure (by task order it is arbitrary which); tasks after a failure still run, harmlessly.
  std::mutex mutex;
  crosslayer_status status = CROSSLAYER_OK;
  std::string message;
};

void run_task(void* user_data, std::size_t task) {
  Job& job = *static_cast<Job*>(user_data);
  const std::int64_t image = static_cast<std::int64_t>(task) / job.blocks;
  const std::int64_t k_begin = (static_cast<std::int64_t>(task) % job.blocks) * job.block;
  const std::int64_t k_count = std::min(job.block, job.dk - k_begin);
  if (k_count <= 0) return;
  const float* local = job.local + image * job.dt_in * job.positions;
  const float* guidance = job.guidance + (image * job.dk + k_begin) * job.positions;
  float* mean = job.channel_mean ? job.channel_mean + image * job.dk + k_begin : nullptr;
  crosslayer_status status;
  if (job.kind == Output::Codes) {
    std::uint64_t* bits = job.bits + (image * job.dk + k_begin) * 2 * CROSSLAYER_WORDS_PER_PLANE(job.dt);
    status = crosslayer_pool_codes(local, guidance, 1, job.dt_in, k_count, job.positions, job.pca_mean,
                                   job.pca_projection, job.dt, bits, mean, 1);
  } else {
    float* representation = job.representation + (image * job.dk + k_begin) * job.dt;
    status = crosslayer_pool_float(local, guidance, 1, job.dt_in, k_count, job.positions, job.pca_mean,
                                   job.pca_projection, job.dt, representation, mean, 1);
  }
  if (status != CROSSLAYER_OK) {
    std::lock_guard<std::mutex> lock(job.mutex);
    if (job.status == CROSSLAYER_OK) {
      job.status = status;
      job.message = crosslayer_last_error();  // this thread's message, read on this thread
    }
  }
}

void compute(Output kind, OrtKernelContext* context) {
  const Tensor local = float_input(context, 0, "local");
  const Tensor guidance = float_input(context, 1, "guidance");
  const Tensor mean = float_input(context, 2, "pca_mean");
  const Tensor projection = float_input(context, 3, "pca_projection");
  require(local.data != nullptr || !local.shape.empty(), "local: the input is required");
  require(local.shape.size() == 4, "local: expected float32 (n, Dt_in, H, W), got shape " + shape_text(local.shape));
  require(guidance.shape.size() == 4,
          "guidance: expected float32 (n, Dk, H, W), got shape " + shape_text(guidance.shape));
  const std::int64_t n = local.shape[0], dt_in = local.shape[1], dk = guidance.shape[1];
  require(guidance.shape[0] == n && guidance.shape[2] == local.shape[2] && guidance.shape[3] == local.shape[3],
          "guidance: expected the n, H, W of local " + shape_text(local.shape) + ", got " + shape_text(guidance.shape));
  require(dt_in >= 1 && dk >= 1 && local.shape[2] >= 1 && local.shape[3] >= 1,
          "local, guidance: Dt_in, Dk, H and W must be >= 1, got " + shape_text(local.shape) + " and " +
              shape_text(guidance.shape));
  const bool has_pca = !mean.shape.empty() || !projection.shape.empty();
  std::int64_t dt = dt_in;
  if (has_pca) {
    require(!mean.shape.empty() && !projection.shape.empty(),
            "pca_mean, pca_projection: give both (PCA) or neither (empty input names)");
    require(mean.shape.size() == 1 && mean.shape[0] == dt_in,
            "pca_mean: expected shape (" + std::to_string(dt_in) + ",), got " + shape_text(mean.shape));
    require(projection.shape.size() == 2 && projection.shape[0] == dt_in && projection.shape[1] >= 1,
            "pca_projection: expected shape (" + std::to_string(dt_in) + ", Dt), got " + shape_text(projection.shape));
    dt = projection.shape[1];
  }
  Job job;
  job.kind = kind;
  job.local = local.data;
  job.guidance = guidance.data;
  job.pca_mean = has_pca ? mean.data : nullptr;
  job.pca_projection = has_pca ? projection.data : nullptr;
  job.dt_in = dt_in;
  job.dk = dk;
  job.positions = local.shape[2] * local.shape[3];
  job.dt = dt;
  if (kind == Output::Codes) {
    job.bits = output<std::uint64_t>(context, 0, {n, dk, 2, CROSSLAYER_WORDS_PER_PLANE(dt)});
    job.channel_mean = output<float>(context, 1, {n, dk});
    job.representation = nullptr;
  } else {
    job.representation = output<float>(context, 0, {n, dk * dt});
    job.bits = nullptr;
    job.channel_mean = nullptr;
  }
  if (n == 0) return;
  job.blocks = n >= kMinTasks ? 1 : std::min(dk, (kMinTasks + n - 1) / n);
  job.block = (dk + job.blocks - 1) / job.blocks;
  job.blocks = (dk + job.block - 1) / job.block;
  check(ort->KernelContext_ParallelFor(context, run_task, static_cast<std::size_t>(n * job.blocks), 0, &job));
  if (job.status != CROSSLAYER_OK)
    throw OpError{job.status == CROSSLAYER_OUT_OF_MEMORY ? ORT_FAIL : ORT_INVALID_ARGUMENT, job.message};
}

OrtStatus* to_status(const OpError& error) { return ort->CreateStatus(error.code, error.message.c_str()); }

template <Output kind>
struct PoolOp : OrtCustomOp {
  explicit PoolOp(std::uint32_t api_version) : OrtCustomOp{} {
    version = api_version;
    GetName = [](const OrtCustomOp*) { return kind == Output::Codes ? "PoolCodes" : "PoolFloat"; };
    GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
    GetInputTypeCount = [](const OrtCustomOp*) -> std::size_t { return 4; };
    GetInputType = [](const OrtCustomOp*, std::size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetInputCharacteristic = [](const OrtCustomOp*, std::size_t index) {
      return index < 2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
    };
    GetOutputTypeCount = [](const OrtCustomOp*) -> std::size_t { return kind == Output::Codes ? 2 : 1; };
    GetOutputType = [](const OrtCustomOp*, std::size_t index) {
      return kind == Output::Codes && index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64
                                                 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    };
    GetOutputCharacteristic = [](const OrtCustomOp*, std::size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, std::size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetStartVersion = [](const OrtCustomOp*) { return kOpsetVersion; };
    GetEndVersion = [](const OrtCustomOp*) { return kOpsetVersion; };
    // The kernel is stateless: onnxruntime gets a non-null token and hands it back to compute and destroy.
    CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo*, void** kernel) -> OrtStatus* {
      *kernel = const_cast<OrtCustomOp*>(op);
      return nullptr;
    };
    KernelComputeV2 = [](void*, OrtKernelContext* context) -> OrtStatus* {
      try {
        compute(kind, context);
        return nullptr;
      } catch (const OpError& error) {
        return to_status(error);
      } catch (const std::exception& error) {
        return ort->CreateStatus(ORT_FAIL, error.what());
      } catch (...) {
        return ort->CreateStatus(ORT_FAIL, "crosslayer custom op: unknown error");
      }
    };
    KernelDestroy = [](void*) {};
  }
};

// Domains must outlive every session that uses them; onnxruntime unloads the library only after those are gone.
struct Domains {
  std::mutex mutex;
  std::vector<OrtCustomOpDomain*> domains;
  ~Domains() {
    for (OrtCustomOpDomain* domain : domains) ort->ReleaseCustomOpDomain(domain);
  }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // The newest API this header knows that the running onnxruntime also offers (a newer header still loads there).
  std::uint32_t api_version = ORT_API_VERSION;
  const OrtApi* api = nullptr;
  for (; api_version >= kMinimumApiVersion && api == nullptr; --api_version) api = api_base->GetApi(api_version);
  if (api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);  // every onnxruntime offers version 1, enough to report the error
    return oldest->CreateStatus(ORT_FAIL, "libcrosslayer_ortops needs onnxruntime >= 1.17 (C API version 17)");
  }
  ++api_version;
  ort = api;
  static PoolOp<Output::Codes> pool_codes(api_version);
  static PoolOp<Output::Float> pool_float(api_version);
  static Domains registry;
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = ort->CreateCustomOpDomain(kDomain, &domain)) return status;
  {
    std::lock_guard<std::mutex> lock(registry.mutex);
    registry.domains.push_back(domain);
  }
  if (OrtStatus* status = ort->CustomOpDomain_Add(domain, &pool_codes)) return status;
  if (OrtStatus* status = ort->CustomOpDomain_Add(domain, &pool_float)) return status;
  return ort->AddCustomOpDomain(options, domain);
}

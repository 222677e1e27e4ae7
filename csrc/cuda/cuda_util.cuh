// Shared helpers of the CUDA kernels: error strings instead of aborts, and stream-ordered scratch memory.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace crosslayer::cuda_detail {

// The contracts return `const char*`; a thread-local buffer keeps the message alive until the next call on the
// same thread, which is all the binding needs (it copies the text into a Python exception at once).
inline const char* remember_error(const std::string& message) {
  thread_local std::string last;
  last = message;
  return last.c_str();
}

// Errors of CUDA calls start with this, so the binding can tell them (RuntimeError) from bad arguments (ValueError).
constexpr const char* kCudaFailurePrefix = "CUDA failure: ";

inline const char* cuda_error(const char* where, cudaError_t status) {
  return remember_error(std::string(kCudaFailurePrefix) + where + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

// Scratch memory allocated and freed on the caller's stream (stream-ordered allocator), so a kernel sequence never
// synchronises the device and concurrent callers on different streams never share a buffer.
class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  cudaError_t allocate(std::size_t bytes) {
    if (bytes == 0) bytes = 1;
    return cudaMallocAsync(&ptr_, bytes, stream_);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

// Keeps freed scratch in the device's default memory pool between calls instead of returning it to the driver at
// every synchronisation (the pool's default threshold of 0 would make each search pay for fresh allocations).
inline cudaError_t keep_pool_memory_cached() {
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  cudaMemPool_t pool;
  status = cudaDeviceGetDefaultMemPool(&pool, device);
  if (status != cudaSuccess) return status;
  std::uint64_t threshold = 0;
  status = cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  if (status != cudaSuccess) return status;
  if (threshold == 0) {
    threshold = std::uint64_t(1) << 30;
    status = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  }
  return status;
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace crosslayer::cuda_detail

// Returns an error string from the enclosing contract function when a CUDA call fails.
#define CROSSLAYER_CUDA_TRY(call)                                                       \
  do {                                                                                  \
    const cudaError_t crosslayer_status_ = (call);                                      \
    if (crosslayer_status_ != cudaSuccess)                                              \
      return ::crosslayer::cuda_detail::cuda_error(#call, crosslayer_status_);          \
  } while (0)

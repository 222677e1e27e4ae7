// The C API of the fused resize + normalise (crosslayer/prepare_image.h): argument checks, then the kernel.
#include <cstdint>
#include <string>

#include "crosslayer/crosslayer.h"
#include "crosslayer/prepare_image.h"
#include "status.h"

using crosslayer::capi::guarded;
using crosslayer::capi::require;
using crosslayer::capi::require_dimension;
using crosslayer::capi::require_kernel_ok;

extern "C" {

crosslayer_status crosslayer_prepare_image(const uint8_t* pixels, int64_t height, int64_t width, int64_t row_stride,
                                           int64_t pixel_stride, int64_t channel_stride, int64_t side, int policy,
                                           const uint8_t* fill, const float* scale, const float* offset, float* out,
                                           uint8_t* out_resized, int path) {
  return guarded([&] {
    require_dimension(height, 1, "height");
    require_dimension(width, 1, "width");
    require_dimension(side, 1, "side");
    require(side <= (std::int64_t{1} << 20), "side: expected at most 2^20, got " + std::to_string(side));
    require(pixels != nullptr, "pixels: expected height x width x 3 uint8, got NULL");
    require(policy == CROSSLAYER_RESIZE_SQUARE || policy == CROSSLAYER_RESIZE_CENTER_CROP ||
                policy == CROSSLAYER_RESIZE_PAD,
            "policy: expected a crosslayer_resize_policy (0 square, 1 center-crop, 2 pad), got " +
                std::to_string(policy));
    require(policy != CROSSLAYER_RESIZE_PAD || fill != nullptr, "fill: expected uint8 [3] for pad, got NULL");
    require(out != nullptr || out_resized != nullptr, "out, out_resized: expected at least one, got NULL for both");
    require(out == nullptr || (scale != nullptr && offset != nullptr),
            "scale, offset: expected float32 [3] each with out, got NULL");
    crosslayer::PrepareImageArgs args;
    args.pixels = pixels;
    args.height = height;
    args.width = width;
    args.row_stride = row_stride;
    args.pixel_stride = pixel_stride;
    args.channel_stride = channel_stride;
    args.side = side;
    args.policy = static_cast<crosslayer::ResizePolicy>(policy);
    for (int c = 0; c < 3; ++c) {
      if (fill) args.fill[c] = fill[c];
      if (scale) args.scale[c] = scale[c];
      if (offset) args.offset[c] = offset[c];
    }
    args.out = out;
    args.out_resized = out_resized;
    args.path = static_cast<crosslayer::PreparePath>(path);
    require_kernel_ok(crosslayer::prepare_image(args));
  });
}

}  // extern "C"

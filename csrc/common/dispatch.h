// Host-side helpers that turn runtime flags into compile-time constants for kernel templates.
#pragma once

#include <type_traits>

namespace spikekern {

template <auto kValue>
using Constant = std::integral_constant<decltype(kValue), kValue>;

// Calls body(std::true_type{}) or body(std::false_type{}); read the flag as decltype(arg)::value.
template <typename Body>
void dispatch_bool(bool flag, Body&& body) {
  if (flag) {
    body(std::true_type{});
  } else {
    body(std::false_type{});
  }
}

}  // namespace spikekern

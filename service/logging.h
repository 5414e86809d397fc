// rewrapd's log: spdlog to stderr at config.log_level, as JSON lines (one object a line)
// unless log_format is "text" or, with log_format unset, stderr is a terminal.
#pragma once

#include "service/config.h"

namespace hsmrewrap::service {

void SetUpLogging(const Config& config);

}  // namespace hsmrewrap::service

// The capturefs command line, as a function so that tests can run it
// in-process. main() is one line.
#pragma once

namespace capturefs::cli {

int tool_main(int argc, char** argv);

}  // namespace capturefs::cli

#include "cli/cli.hpp"

int main(int argc, char** argv) { return capturefs::cli::tool_main(argc, argv); }

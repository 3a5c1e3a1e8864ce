/*
 * std::ios_base_library_init() for libstdc++ older than GCC 13.
 *
 * GCC 13 headers make every translation unit that includes <iostream> call this
 * function (symbol version GLIBCXX_3.4.32) so iostreams are initialised once.
 * Older libstdc++ initialises iostreams from its own static constructor, so an
 * empty definition is correct there. build/NativeCompat.ps1 links this into the
 * module's copy of libLibTorchSharp.so only when the system libstdc++ lacks
 * GLIBCXX_3.4.32.
 */
void _ZSt21ios_base_library_initv(void) {}

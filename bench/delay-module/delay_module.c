/*
 * A forwarding PKCS#11 module that adds latency, to stand in for a network HSM.
 *
 * It loads the real module named by HSMREWRAP_DELAY_MODULE (default: SoftHSM2), copies
 * that module's CK_FUNCTION_LIST, and replaces only the entries that should be slow, so
 * every other function is forwarded untouched (the real module's own pointers) and the
 * module stays exactly as capable as the one it wraps. Configuration, read once:
 *
 *   HSMREWRAP_DELAY_MODULE  absolute path of the real module
 *   HSMREWRAP_DELAY_US      microseconds to sleep before each delayed call (default 2000)
 *
 * Delayed: C_Decrypt, C_UnwrapKey, C_WrapKey (one token round trip per operation).
 * The sleep does not use CPU, like a network wait. Reusable for fault injection: add a
 * wrapper and a line in Init().
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static CK_RV g_init_rv = CKR_GENERAL_ERROR;
static CK_FUNCTION_LIST g_list;        /* ours: the real list with some entries replaced */
static CK_FUNCTION_LIST_PTR g_real;    /* the real module's list */
static long g_delay_us = 2000;

static void Delay(void) {
  if (g_delay_us <= 0) return;
  struct timespec ts = {g_delay_us / 1000000, (g_delay_us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static CK_RV DelayedDecrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                            CK_ULONG_PTR out_len) {
  Delay();
  return g_real->C_Decrypt(s, in, in_len, out, out_len);
}

static CK_RV DelayedUnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE unwrapping_key,
                              CK_BYTE_PTR wrapped, CK_ULONG wrapped_len, CK_ATTRIBUTE_PTR tmpl,
                              CK_ULONG count, CK_OBJECT_HANDLE_PTR key) {
  Delay();
  return g_real->C_UnwrapKey(s, m, unwrapping_key, wrapped, wrapped_len, tmpl, count, key);
}

static CK_RV DelayedWrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping_key,
                            CK_OBJECT_HANDLE key, CK_BYTE_PTR wrapped, CK_ULONG_PTR wrapped_len) {
  Delay();
  return g_real->C_WrapKey(s, m, wrapping_key, key, wrapped, wrapped_len);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static void Init(void) {
  const char* path = getenv("HSMREWRAP_DELAY_MODULE");
  if (path == NULL || *path == '\0') path = DEFAULT_MODULE;
  const char* us = getenv("HSMREWRAP_DELAY_US");
  if (us != NULL && *us != '\0') g_delay_us = strtol(us, NULL, 10);
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "delay module: cannot load %s: %s\n", path, dlerror());
    return;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  if (get == NULL || get(&g_real) != CKR_OK || g_real == NULL) {
    fprintf(stderr, "delay module: %s has no usable C_GetFunctionList\n", path);
    return;
  }
  g_list = *g_real;
  g_list.C_GetFunctionList = C_GetFunctionList;
  g_list.C_Decrypt = DelayedDecrypt;
  g_list.C_UnwrapKey = DelayedUnwrapKey;
  g_list.C_WrapKey = DelayedWrapKey;
  g_init_rv = CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == NULL) return CKR_ARGUMENTS_BAD;
  pthread_once(&g_once, Init);
  if (g_init_rv != CKR_OK) return g_init_rv;
  *list = &g_list;
  return CKR_OK;
}

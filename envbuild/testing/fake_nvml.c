/*
 * A fake libnvidia-ml.so.1 for tests: the real pynvml loads it through ctypes and sees the
 * GPUs and driver described by environment variables. Only the entry points pynvml calls
 * for envbuild's survey exist.
 *
 *   FAKE_NVML_DRIVER   driver version string, e.g. "550.54.15"
 *   FAKE_NVML_CUDA     CUDA version the driver supports, as NVML encodes it (12040 = 12.4)
 *   FAKE_NVML_DEVICES  "NAME,MAJOR.MINOR,UUID;NAME,MAJOR.MINOR,UUID;..."
 *   FAKE_NVML_INIT     a number: nvmlInit returns it (9 = NVML_ERROR_DRIVER_NOT_LOADED)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define MAX_DEVICES 16

typedef struct {
    char name[96];
    char uuid[96];
    int major, minor;
} fake_device;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

static fake_device devices[MAX_DEVICES];
static unsigned int device_count = 0;

static int copy_out(char *out, unsigned int size, const char *value) {
    if (strlen(value) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

static void load_devices(void) {
    const char *spec = getenv("FAKE_NVML_DEVICES");
    device_count = 0;
    if (!spec) return;
    char *copy = strdup(spec), *save = NULL;
    for (char *item = strtok_r(copy, ";", &save); item && device_count < MAX_DEVICES;
         item = strtok_r(NULL, ";", &save)) {
        fake_device *d = &devices[device_count];
        char *name = strtok(item, ","), *cc = strtok(NULL, ","), *uuid = strtok(NULL, ",");
        if (!name || !cc) continue;
        snprintf(d->name, sizeof d->name, "%s", name);
        snprintf(d->uuid, sizeof d->uuid, "%s",
                 uuid ? uuid : "GPU-00000000-0000-0000-0000-000000000000");
        if (sscanf(cc, "%d.%d", &d->major, &d->minor) != 2) continue;
        device_count++;
    }
    free(copy);
}

int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const char *fail = getenv("FAKE_NVML_INIT");
    if (fail && atoi(fail) != 0) return atoi(fail);
    load_devices();
    return NVML_SUCCESS;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(int result) {
    switch (result) {
    case 9: return "Driver Not Loaded";
    case 12: return "NVML Shared Library Not Found";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    const char *v = getenv("FAKE_NVML_DRIVER");
    return copy_out(version, length, v ? v : "550.54.15");
}

int nvmlSystemGetCudaDriverVersion(int *version) {
    const char *v = getenv("FAKE_NVML_CUDA");
    *version = v ? atoi(v) : 12040;
    return NVML_SUCCESS;
}
int nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }

int nvmlDeviceGetCount_v2(unsigned int *count) {
    *count = device_count;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, fake_device **device) {
    if (index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(fake_device *device, char *name, unsigned int length) {
    return copy_out(name, length, device->name);
}

int nvmlDeviceGetUUID(fake_device *device, char *uuid, unsigned int length) {
    return copy_out(uuid, length, device->uuid);
}

int nvmlDeviceGetCudaComputeCapability(fake_device *device, int *major, int *minor) {
    *major = device->major;
    *minor = device->minor;
    return NVML_SUCCESS;
}

int nvmlDeviceGetMemoryInfo(fake_device *device, nvmlMemory_t *memory) {
    (void)device;
    memory->total = 80ULL << 30;
    memory->free = memory->total;
    memory->used = 0;
    return NVML_SUCCESS;
}

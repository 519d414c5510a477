//! Register offsets in a virtio-mmio slot (virtio spec 4.2.2, table "MMIO Device Register
//! Layout"). R: read-only, W: write-only, RW: both.

/// R: "virt".
pub const MAGIC_VALUE: u64 = 0x000;
/// R: transport version.
pub const VERSION: u64 = 0x004;
/// R: virtio device ID.
pub const DEVICE_ID: u64 = 0x008;
/// R: vendor ID.
pub const VENDOR_ID: u64 = 0x00c;
/// R: the 32 feature bits DeviceFeaturesSel selects.
pub const DEVICE_FEATURES: u64 = 0x010;
/// W: which 32 bits DeviceFeatures shows.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// W: the 32 feature bits DriverFeaturesSel selects, as the driver accepts them.
pub const DRIVER_FEATURES: u64 = 0x020;
/// W: which 32 bits DriverFeatures sets.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// W: which queue the queue registers refer to.
pub const QUEUE_SEL: u64 = 0x030;
/// R: maximum size of the selected queue, 0 if it does not exist.
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// W: size of the selected queue.
pub const QUEUE_NUM: u64 = 0x038;
/// RW: whether the selected queue is ready.
pub const QUEUE_READY: u64 = 0x044;
/// W: queue notification; the value is the queue index. A KVM ioeventfd goes here.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// R: why the interrupt fired.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// W: which interrupt causes the driver handled.
pub const INTERRUPT_ACK: u64 = 0x064;
/// RW: device status.
pub const STATUS: u64 = 0x070;
/// W: descriptor table address, low 32 bits.
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// W: descriptor table address, high 32 bits.
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// W: driver (available) ring address, low 32 bits.
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// W: driver (available) ring address, high 32 bits.
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// W: device (used) ring address, low 32 bits.
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// W: device (used) ring address, high 32 bits.
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// W: which shared memory region the SHM registers refer to.
pub const SHM_SEL: u64 = 0x0ac;
/// R: shared memory region length, low 32 bits.
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// R: shared memory region length, high 32 bits.
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// R: shared memory region base, low 32 bits.
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// R: shared memory region base, high 32 bits.
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// R: changes whenever the configuration space may have changed.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// RW: start of the device configuration space.
pub const CONFIG: u64 = 0x100;

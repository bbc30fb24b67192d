import Testing
import SwiftletVMM

/// `DriveConfig.ephemeral`: checked with the rest of the configuration.
struct EphemeralConfigTests {
    @Test func readOnlyAndEphemeralTogetherAreOneClearLine() throws {
        var config = MachineConfig(kernelPath: "/nonexistent/bzImage", cmdline: "")
        config.drives = [DriveConfig(path: "/d.img", ephemeral: true)]
        try config.validate(maxVcpus: 1)
        config.drives.append(DriveConfig(path: "/e.img", readOnly: true, ephemeral: true))
        let error = #expect(throws: VMMError.self) { try config.validate(maxVcpus: 1) }
        let line = error.map { "\($0)" } ?? ""
        #expect(line.contains("/e.img") && line.contains("ro and ephemeral") && !line.contains("\n"), "\(line)")
    }

    @Test func ephemeralDefaultsOff() {
        #expect(DriveConfig(path: "/d.img").ephemeral == false)
        #expect(DriveConfig(path: "/d.img", ephemeral: true) != DriveConfig(path: "/d.img"))
    }
}

# A tiny guest that checks which privilege level a user-mode SYSCALL arrives at.
# Loaded at 0x100000 (long mode, identity map, by Swiftlet's flat payload).
# Build: as --64 -o s.o syscall-cpl.S && ld -Ttext=0x100000 --oformat binary -o s.bin s.o
# Prints on the UART:
#   "K" CS SS       the SYSCALL entry ran at CPL0 (CS=0x10, SS=0x18), as on hardware;
#   "E" vec CS      an exception (vector, CS of the faulting code) instead: on nested
#                   PVM the entry runs at CPL3 (CS=0x33) and its `out` raises #GP (13).
.code64
start:
    mov $0x9000, %rax; orq $4, (%rax)          # user access to the first 2 MiB
    mov $0xa000, %rax; orq $4, (%rax)
    mov $0xb000, %rax; orq $4, (%rax)
    mov %cr3, %rax; mov %rax, %cr3
    lgdt gdtr
    movq $0x170000, tss+4                      # RSP0 for exceptions from user mode
    mov $0x40, %ax; ltr %ax
    mov $0x18, %ax; mov %ax, %ds; mov %ax, %es; mov %ax, %ss
    mov $0xc0000080, %ecx; rdmsr; or $1, %eax; wrmsr            # EFER.SCE
    mov $0xc0000081, %ecx; xor %eax, %eax; mov $0x00230010, %edx; wrmsr   # STAR
    mov $0xc0000082, %ecx; mov $entry, %eax; xor %edx, %edx; wrmsr         # LSTAR
    mov $0xc0000084, %ecx; mov $0x700, %eax; xor %edx, %edx; wrmsr         # SFMASK
    mov $idt, %rdi; mov $stubs, %rsi; mov $32, %ecx             # 32 interrupt gates
1:  mov %rsi, %rax; mov %ax, (%rdi); movw $0x10, 2(%rdi); movw $0x8e00, 4(%rdi)
    shr $16, %rax; mov %ax, 6(%rdi); shr $16, %rax; mov %eax, 8(%rdi); movl $0, 12(%rdi)
    add $16, %rdi; add $16, %rsi; dec %ecx; jnz 1b
    lidt idtr
    pushq $0x2b; pushq $0x180000; pushq $0x202; pushq $0x33; pushq $user
    iretq
user:
    syscall
    ud2
entry:
    mov $0x3f8, %dx; mov $'K', %al; out %al, %dx
    mov %cs, %ax; out %al, %dx
    mov %ss, %ax; out %al, %dx
    cli
2:  hlt; jmp 2b
.align 16
stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .align 16
    mov $\v, %bl; jmp fault
.endr
fault:                      # vectors 8, 10-14, 17 push an error code: CS is then at 16(%rsp)
    mov $0x3f8, %dx; mov $'E', %al; out %al, %dx
    mov %bl, %al; out %al, %dx
    mov 16(%rsp), %al; out %al, %dx
    cli
3:  hlt; jmp 3b
.align 16
gdt:
    .quad 0, 0x00cf9b000000ffff, 0x00af9b000000ffff, 0x00cf93000000ffff   # 0x08 code32, 0x10 code64, 0x18 data
    .quad 0x00cffb000000ffff, 0x00cff3000000ffff, 0x00affb000000ffff, 0  # 0x23 user code32, 0x2b data, 0x33 code64
    .word 0x67; .word tss & 0xffff; .byte (tss >> 16) & 0xff, 0x89, 0, 0; .long 0, 0   # 0x40 TSS
gdtr: .word gdtr - gdt - 1; .quad gdt
idtr: .word 32 * 16 - 1; .quad idt
.equ tss, 0x104000
.equ idt, 0x105000

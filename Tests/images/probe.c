// probe: a static test program for the test images (Tests/images/build.sh puts it at
// /usr/bin/probe). It shows what busybox cannot: a file's extended attributes.
//
//   probe xattrs PATH        every xattr of PATH (not following a symlink), one `name=value` a line,
//                            sorted by name; values printed as text, bytes outside 0x20-0x7e as \xNN
//   probe getxattr PATH NAME the value of one xattr (exit 1 when absent)
//   probe stat PATH          `type mode uid gid nlink ino major:minor` from lstat (mode in octal,
//                            with the setuid/setgid/sticky bits)
//
// Exit status: 0, 1 when the file or attribute is missing, 2 for bad usage.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

static void print_value(const char *v, ssize_t n) {
    for (ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') putchar(c);
        else printf("\\x%02x", c);
    }
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int xattrs(const char *path) {
    char names[65536];
    ssize_t n = llistxattr(path, names, sizeof names);
    if (n < 0) { fprintf(stderr, "probe: %s: %s\n", path, strerror(errno)); return 1; }
    char *list[1024];
    int count = 0;
    for (char *p = names; p < names + n && count < 1024; p += strlen(p) + 1) list[count++] = p;
    qsort(list, count, sizeof list[0], cmp);
    for (int i = 0; i < count; i++) {
        char value[65536];
        ssize_t v = lgetxattr(path, list[i], value, sizeof value);
        if (v < 0) { fprintf(stderr, "probe: %s: %s: %s\n", path, list[i], strerror(errno)); return 1; }
        printf("%s=", list[i]);
        print_value(value, v);
        putchar('\n');
    }
    return 0;
}

static int getone(const char *path, const char *name) {
    char value[65536];
    ssize_t v = lgetxattr(path, name, value, sizeof value);
    if (v < 0) { fprintf(stderr, "probe: %s: %s: %s\n", path, name, strerror(errno)); return 1; }
    print_value(value, v);
    putchar('\n');
    return 0;
}

static int statpath(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) { fprintf(stderr, "probe: %s: %s\n", path, strerror(errno)); return 1; }
    const char *type = S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "symlink"
                     : S_ISCHR(st.st_mode) ? "char" : S_ISBLK(st.st_mode) ? "block" : S_ISFIFO(st.st_mode) ? "fifo" : "other";
    printf("%s %o %u %u %lu %lu %u:%u\n", type, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid,
           (unsigned long)st.st_nlink, (unsigned long)st.st_ino, major(st.st_rdev), minor(st.st_rdev));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "xattrs") == 0) return xattrs(argv[2]);
    if (argc == 4 && strcmp(argv[1], "getxattr") == 0) return getone(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "stat") == 0) return statpath(argv[2]);
    fprintf(stderr, "usage: probe xattrs PATH | probe getxattr PATH NAME | probe stat PATH\n");
    return 2;
}

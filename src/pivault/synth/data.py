"""Published shares and word lists behind the synthetic population.

Every figure here is approximate and rounded; the point is a population whose
marginal distributions look like the real one, not a statistical model. All
word lists are generic vocabulary: no entry names a real person.
"""

from __future__ import annotations

#: Resident population by province, in ten thousands: the Seventh National
#: Population Census, communiqué no. 3 (National Bureau of Statistics, 11 May
#: 2021), census date 1 November 2020. Keyed by the two-digit division code.
PROVINCE_POPULATION: dict[str, int] = {
    "11": 2189, "12": 1387, "13": 7461, "14": 3492, "15": 2405,
    "21": 4259, "22": 2407, "23": 3185,
    "31": 2487, "32": 8475, "33": 6457, "34": 6103, "35": 4154, "36": 4519, "37": 10153,
    "41": 9937, "42": 5775, "43": 6644, "44": 12601, "45": 5013, "46": 1008,
    "50": 3205, "51": 8367, "52": 3856, "53": 4721, "54": 365,
    "61": 3953, "62": 2502, "63": 592, "64": 720, "65": 2585,
}

#: Share of the population (percent) by five-year age group 0-4, 5-9, ...,
#: 95-99: the shape of the 2020 census age table (Tabulation on the 2020
#: Population Census of the People's Republic of China, table 1-7), rounded.
AGE_GROUP_SHARES: tuple[float, ...] = (
    5.54, 6.41, 6.00, 5.22, 5.31, 6.46, 8.80, 6.97, 6.57, 8.28,
    8.62, 7.07, 5.14, 5.48, 3.64, 2.28, 1.39, 0.73, 0.24, 0.05,
)

#: Surname shares (percent of the Han population): Yuan Yida et al., Chinese
#: Academy of Sciences, national surname survey of 2006 (296 million records),
#: as widely reprinted; ranks 86-100 are given there as "about 0.2%" and are
#: entered as such. 萧 is written 肖 and 阎 is written 闫, as registered today.
SURNAMES: tuple[tuple[str, float], ...] = (
    ("李", 7.94), ("王", 7.41), ("张", 7.07), ("刘", 5.38), ("陈", 4.53), ("杨", 3.08),
    ("赵", 2.29), ("黄", 2.23), ("周", 2.12), ("吴", 2.05), ("徐", 1.67), ("孙", 1.54),
    ("胡", 1.31), ("朱", 1.26), ("高", 1.21), ("林", 1.18), ("何", 1.17), ("郭", 1.15),
    ("马", 1.05), ("罗", 0.86), ("梁", 0.84), ("宋", 0.81), ("郑", 0.78), ("谢", 0.72),
    ("韩", 0.68), ("唐", 0.65), ("冯", 0.64), ("于", 0.62), ("董", 0.61), ("肖", 0.59),
    ("程", 0.57), ("曹", 0.57), ("袁", 0.54), ("邓", 0.54), ("许", 0.54), ("傅", 0.51),
    ("沈", 0.50), ("曾", 0.50), ("彭", 0.49), ("吕", 0.47), ("苏", 0.47), ("卢", 0.47),
    ("蒋", 0.47), ("蔡", 0.46), ("贾", 0.42), ("丁", 0.42), ("魏", 0.42), ("薛", 0.42),
    ("叶", 0.42), ("闫", 0.41), ("余", 0.41), ("潘", 0.41), ("杜", 0.40), ("戴", 0.39),
    ("夏", 0.39), ("钟", 0.39), ("汪", 0.38), ("田", 0.38), ("任", 0.38), ("姜", 0.37),
    ("范", 0.36), ("方", 0.36), ("石", 0.35), ("姚", 0.35), ("谭", 0.34), ("廖", 0.34),
    ("邹", 0.33), ("熊", 0.32), ("金", 0.32), ("陆", 0.31), ("郝", 0.30), ("孔", 0.29),
    ("白", 0.29), ("崔", 0.28), ("康", 0.28), ("毛", 0.27), ("邱", 0.27), ("秦", 0.26),
    ("江", 0.26), ("史", 0.25), ("顾", 0.25), ("侯", 0.25), ("邵", 0.24), ("孟", 0.24),
    ("龙", 0.24), ("万", 0.20), ("段", 0.20), ("雷", 0.20), ("钱", 0.20), ("汤", 0.20),
    ("尹", 0.20), ("黎", 0.20), ("易", 0.20), ("常", 0.20), ("武", 0.20), ("乔", 0.20),
    ("贺", 0.20), ("赖", 0.20), ("龚", 0.20), ("文", 0.20),
)

#: Less common single-character surnames (ranks past 100): no published
#: shares are used; together they stand for the long tail, 0.05% each.
TAIL_SURNAMES: str = (
    "庞樊兰殷施陶洪翟安颜倪严牛温芦季俞章鲁葛伍韦申尤毕聂丛焦向柳邢路岳齐梅莫庄辛管"
    "祝左涂谷祁时舒耿牟卜詹关苗凌费纪靳盛童欧甄项曲成游阳裴席卫查屈鲍位覃霍翁隋甘景"
)
TAIL_SHARE = 0.05

#: Compound surnames. 欧阳 is the most common (the Ministry of Public Security's
#: 2020 national name report); its share and the others' are rough figures.
COMPOUND_SURNAMES: tuple[tuple[str, float], ...] = (
    ("欧阳", 0.08), ("司马", 0.01), ("上官", 0.01), ("诸葛", 0.01), ("东方", 0.005),
    ("皇甫", 0.005), ("尉迟", 0.005), ("令狐", 0.005), ("慕容", 0.005), ("司徒", 0.01),
    ("夏侯", 0.005), ("公孙", 0.005),
)

#: Common given-name characters (the name reports' frequent characters),
#: roughly most frequent first; a character may appear in both lists.
GIVEN_MALE: str = (
    "伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林欢阳建国峰晨博文志"
    "海东亮成永兵锋坤毅翔鹤然睿轩泽子豪铭昊宏德振天昌新春宝良庆文彬哲"
)
GIVEN_FEMALE: str = (
    "芳娜敏静丽艳娟霞秀玲桂英燕萍红婷雪琳洁梅慧丹莉倩颖琴云兰晶蕾欣怡佳悦涵萱璐瑶"
    "婧琪雅蓉薇月凤嘉玉珍荣妍馨诗雨思梦晓露菲媛"
)

#: Transliterated Uyghur given names (forename·father's name), common words.
UYGHUR_MALE: tuple[str, ...] = (
    "买买提", "艾力", "阿卜杜拉", "努尔", "吐尔逊", "热合曼", "艾买提", "亚森", "玉素甫",
    "阿不都", "依明", "卡德尔", "库尔班", "艾合买提", "米吉提", "吾斯曼",
)
UYGHUR_FEMALE: tuple[str, ...] = (
    "阿依古丽", "古丽", "热依拉", "帕提古丽", "米热古丽", "阿依努尔", "祖丽菲亚", "努尔古丽",
    "布合力其", "阿米娜", "再娜甫", "哈丽达",
)
#: Tibetan names (two or four characters, no middle dot).
TIBETAN: tuple[str, ...] = (
    "扎西", "次仁", "格桑", "卓玛", "达瓦", "尼玛", "旺堆", "央金", "索朗", "拉姆", "平措",
    "德吉", "顿珠", "普布", "边巴", "白玛",
)
#: Mongolian names (three to five characters).
MONGOLIAN: tuple[str, ...] = (
    "巴特尔", "乌云其木格", "其其格", "苏和", "额尔敦", "斯琴", "那仁", "宝音", "图雅",
    "乌兰", "孟和", "朝鲁",
)

#: Mobile subscribers by carrier, millions: carriers' annual reports for
#: 2023 (China Mobile about 991, China Telecom about 409, China Unicom about
#: 333); China Broadnet and the virtual operators are round estimates.
CARRIER_SUBSCRIBERS: dict[str, float] = {
    "china_mobile": 991.0, "china_telecom": 409.0, "china_unicom": 333.0,
    "china_broadnet": 30.0, "virtual": 25.0,
}
#: Relative use of a prefix within its carrier: the long-established 13x,
#: 15x and 18x blocks carry most subscribers (an illustrative assumption).
PREFIX_AGE_WEIGHT: dict[str, float] = {
    "13": 3.0, "15": 3.0, "18": 3.0, "17": 1.5, "19": 1.5, "16": 1.0, "14": 0.5,
}

#: Street-name roots and suffixes (generic words found in many cities).
STREET_ROOTS: tuple[str, ...] = (
    "人民", "解放", "建设", "中山", "和平", "胜利", "文化", "新华", "长江", "黄河", "东风",
    "健康", "学府", "青年", "朝阳", "光明", "幸福", "团结", "友谊", "工业", "育才", "民主",
    "振兴", "迎宾", "滨江", "湖滨", "北京", "南京", "花园", "春晖", "金桥", "锦绣", "科技",
    "创业", "开发", "新民", "红旗", "五一", "八一", "前进", "丰收", "兴业", "龙泉", "松柏",
    "青松", "桃园", "望江", "紫荆", "复兴", "长安",
)
STREET_SUFFIXES: tuple[str, ...] = ("路", "路", "路", "街", "大道", "大街", "巷", "东路", "西路", "北路")
ESTATE_SUFFIXES: tuple[str, ...] = ("小区", "花园", "家园", "公寓", "新村", "苑")
ESTATE_ROOTS: tuple[str, ...] = (
    "阳光", "翠湖", "金色", "绿洲", "紫薇", "碧桂", "和谐", "书香", "御景", "香樟", "丽景",
    "怡和", "嘉禾", "康乐", "枫林", "星河", "锦江", "银杏", "东方", "海棠", "秀水", "清泉",
    "玉兰", "华庭", "明珠", "天河", "金域", "安居", "富康", "瑞祥", "世纪", "君悦", "龙湖",
)
TOWN_ROOTS: tuple[str, ...] = (
    "城关", "新集", "河口", "石桥", "黄庄", "李家", "王庄", "杨柳", "高桥", "三河", "双塘",
    "白沙", "青山", "马坊", "柳林", "东湖", "西山", "南岗", "北坪", "金鸡",
)
VILLAGE_ROOTS: tuple[str, ...] = (
    "前进", "红星", "张湾", "刘庄", "大营", "小河", "后沟", "上坪", "下洼", "东岭", "西坡",
    "南塘", "北屯", "新庄", "石门", "杏花", "枣林", "沙窝", "槐树", "龙王",
)

#: Case-note fragments. Notes name no person; they describe routine contacts.
NOTE_TOPICS: tuple[str, ...] = (
    "户口迁移", "身份证补领", "居住证办理", "社保缴费", "医保报销", "出入境证件", "机动车登记",
    "邻里纠纷", "噪音扰民", "物业纠纷", "快递丢失", "电信诈骗防范", "子女入学", "养老金领取",
    "低保申请", "房屋租赁登记", "婚姻登记", "出生登记", "临时身份证", "户籍证明开具",
)
NOTE_UNITS: tuple[str, ...] = (
    "户籍科", "辖区派出所", "社区居委会", "街道办事处", "出入境管理大队", "交警大队",
    "社保中心", "民政窗口", "综合服务大厅",
)
NOTE_TEMPLATES: tuple[str, ...] = (
    "{date}来电咨询{topic}事宜，已告知所需材料。",
    "{date}本人到场办理{topic}，材料齐全，已受理。",
    "{date}反映{topic}问题，已登记并转{unit}处理。",
    "{date}电话回访{topic}办理情况，本人表示满意。",
    "{date}核实身份信息，无异常。",
    "{date}申请{topic}，材料不全，已一次性告知补正。",
    "{date}经{unit}调解，{topic}事项已办结。",
    "{date}预约办理{topic}，已安排至{unit}。",
)
NOTE_FOLLOW_UPS: tuple[str, ...] = (
    "已归档。", "待复核。", "已电话通知本人。", "下次来访需携带户口簿。", "无需跟进。",
)

#: Pinyin syllables for over-long Latin-script names in bad rows.
PINYIN: tuple[str, ...] = (
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun",
    "Ming", "Hua", "Jian", "Guo", "Xiao", "Hong", "Wei", "Fang", "Ling", "Yun", "Tao", "Hai",
)
